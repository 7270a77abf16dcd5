//! No import cycle between sibling modules, in any crate of the workspace: a module that needs
//! something from a sibling while that sibling (or one it needs, and so on) needs something
//! back has no single place in the architecture, and the two are one module in two files.
//!
//! Each crate's module tree is read from its sources (`mod` declarations from `lib.rs` or
//! `main.rs`, `#[path]` honoured) and every `use crate::…`, `super::…` or `self::…` path is
//! resolved to the module it names. A reference from `a::x` to `b::y` is an edge between the
//! siblings `a` and `b` under their common parent; a child naming its parent's items (or a
//! parent its child's) is how a module tree works and is not an edge. The test fails naming
//! every cycle, with one reference per edge. Offline: it reads files, nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module's place in its crate: the names from the crate root down.
type ModPath = Vec<String>;

/// One crate's modules and the references between them.
#[derive(Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    /// (from module, referenced path with `crate`/`super`/`self` resolved, where it was seen).
    references: Vec<(ModPath, Vec<String>, String)>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's member folders, the root package's included.
fn members() -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&manifest).unwrap();
    let mut members = vec![root()];
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        members.push(root().join(member.as_str().unwrap()));
    }
    members
}

/// The file a `#[path = "…"]` attribute names. Test modules are read like any other: one
/// needing a sibling is fine, and nothing needs a test module back.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| {
        let syn::Meta::NameValue(meta) = &attr.meta else {
            return None;
        };
        if !meta.path.is_ident("path") {
            return None;
        }
        match &meta.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) => Some(text.value()),
            _ => None,
        }
    })
}

/// Reads the module in `file` (at `module`) and every module it declares, recursively.
/// `dir` is where the files of its outline child modules live.
fn read_module(krate: &mut Crate, file: &Path, module: ModPath, dir: &Path) {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let shown = file
        .strip_prefix(root())
        .unwrap_or(file)
        .display()
        .to_string();
    read_items(krate, &parsed.items, module, dir, file, &shown);
}

fn read_items(
    krate: &mut Crate,
    items: &[syn::Item],
    module: ModPath,
    dir: &Path,
    file: &Path,
    shown: &str,
) {
    krate.modules.insert(module.clone());
    let mut references = References {
        module: module.clone(),
        found: Vec::new(),
    };
    for item in items {
        match item {
            syn::Item::Mod(child) => {
                let name = child.ident.to_string();
                let mut child_path = module.clone();
                child_path.push(name.clone());
                match &child.content {
                    Some((_, inner)) => {
                        read_items(krate, inner, child_path, &dir.join(&name), file, shown);
                    }
                    None => {
                        let source = match path_attribute(&child.attrs) {
                            Some(path) => file.parent().unwrap().join(path),
                            None if dir.join(format!("{name}.rs")).exists() => {
                                dir.join(format!("{name}.rs"))
                            }
                            None => dir.join(&name).join("mod.rs"),
                        };
                        let child_dir = if source.ends_with("mod.rs") {
                            source.parent().unwrap().to_owned()
                        } else {
                            dir.join(&name)
                        };
                        read_module(krate, &source, child_path, &child_dir);
                    }
                }
            }
            other => references.visit_item(other),
        }
    }
    for (path, text) in references.found {
        krate
            .references
            .push((module.clone(), path, format!("{shown}: {text}")));
    }
}

/// Collects the crate-relative paths a module's own items name.
struct References {
    module: ModPath,
    found: Vec<(Vec<String>, String)>,
}

impl References {
    /// `segments` resolved against this module, if it starts at `crate`, `super` or `self`.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "super" | "self" => self.module.clone(),
            _ => return None,
        };
        let mut rest = &segments[1..];
        if first == "super" {
            base.pop()?;
        }
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        base.extend(rest.iter().filter(|s| *s != "self").cloned());
        Some(base)
    }

    fn add(&mut self, segments: Vec<String>) {
        if let Some(resolved) = self.resolve(&segments) {
            self.found.push((resolved, segments.join("::")));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut full = prefix.clone();
                full.push(name.ident.to_string());
                self.add(full);
            }
            syn::UseTree::Rename(rename) => {
                let mut full = prefix.clone();
                full.push(rename.ident.to_string());
                self.add(full);
            }
            syn::UseTree::Glob(_) => self.add(prefix.clone()),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for References {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.add(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }

    /// Inline modules inside items (a `mod tests` in a function is rare, but is its own module
    /// only when declared at item level, which `read_items` handles).
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    /// `#[path = "…"]` and other attributes name files, not modules.
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}
}

/// The longest known module at the start of `path`.
fn module_of(modules: &BTreeSet<ModPath>, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// Edges between siblings, per parent: parent → (from → (to → one reference that made it)).
type Siblings = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>>;

fn sibling_edges(krate: &Crate) -> Siblings {
    let mut edges = Siblings::new();
    for (from, path, seen) in &krate.references {
        let to = module_of(&krate.modules, path);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            // The same module, an ancestor or a descendant: not between siblings.
            continue;
        }
        edges
            .entry(from[..common].to_vec())
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .entry(to[common].clone())
            .or_insert_with(|| seen.clone());
    }
    edges
}

/// Every cycle's members (strongly connected components of two or more), by Tarjan.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flat_map(|e| e.keys()) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.to_owned());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan.found
}

/// Every crate root of `member` (library and binaries), with its module tree read.
fn crates_of(member: &Path) -> Vec<(String, Crate)> {
    let src = member.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| p.exists())
        .collect();
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        roots.extend(bins.filter_map(|e| e.ok().map(|e| e.path())));
    }
    roots
        .into_iter()
        .map(|file| {
            let mut krate = Crate::default();
            let dir = file.parent().unwrap().to_owned();
            read_module(&mut krate, &file, Vec::new(), &dir);
            let name = file
                .strip_prefix(root())
                .unwrap_or(&file)
                .display()
                .to_string();
            (name, krate)
        })
        .collect()
}

/// The cycles of one crate, each with the references that close it.
fn problems(name: &str, krate: &Crate) -> Vec<String> {
    let mut problems = Vec::new();
    for (parent, graph) in sibling_edges(krate) {
        for cycle in cycles(&graph) {
            let members: BTreeSet<&String> = cycle.iter().collect();
            let mut text = format!(
                "{name}: cycle between the modules {} under `{}`:",
                cycle.join(", "),
                if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                }
            );
            for from in &cycle {
                for (to, seen) in &graph[from] {
                    if members.contains(to) {
                        text.push_str(&format!("\n    {from} -> {to} ({seen})"));
                    }
                }
            }
            problems.push(text);
        }
    }
    problems
}

#[test]
fn no_import_cycle_between_sibling_modules_in_any_crate() {
    let mut checked = 0;
    let mut problems_found = Vec::new();
    for member in members() {
        for (name, krate) in crates_of(&member) {
            assert!(!krate.modules.is_empty(), "{name}: no modules read");
            checked += krate.modules.len();
            problems_found.extend(problems(&name, &krate));
        }
    }
    assert!(
        checked > 50,
        "only {checked} modules read: the walk is broken"
    );
    assert!(
        problems_found.is_empty(),
        "import cycles between sibling modules:\n{}",
        problems_found.join("\n")
    );
}

/// The check itself finds a cycle, names it, and ignores a child naming its parent.
#[test]
fn a_cycle_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("report")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "mod report;\nmod sweep;\nmod results;\npub struct Shared;",
    )
    .unwrap();
    std::fs::write(
        src.join("report/mod.rs"),
        "mod html;\nuse crate::sweep::Step;\npub struct Summary;",
    )
    .unwrap();
    std::fs::write(
        src.join("report/html.rs"),
        "use super::Summary;\nfn f() -> crate::Shared { crate::Shared }",
    )
    .unwrap();
    std::fs::write(
        src.join("sweep.rs"),
        "pub struct Step(super::report::Summary);",
    )
    .unwrap();
    std::fs::write(src.join("results.rs"), "use crate::sweep::*;").unwrap();

    let crates = crates_of(dir.path());
    let (name, krate) = &crates[0];
    assert_eq!(krate.modules.len(), 5);
    let found = problems(name, krate);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("cycle between the modules report, sweep under `crate`"),
        "{}",
        found[0]
    );
    assert!(found[0].contains("report -> sweep"), "{}", found[0]);
    assert!(
        found[0].contains("sweep -> report (") && found[0].contains("super::report::Summary"),
        "{}",
        found[0]
    );

    // Without the way back there is no cycle.
    std::fs::write(src.join("sweep.rs"), "pub struct Step;").unwrap();
    let crates = crates_of(dir.path());
    assert!(problems(&crates[0].0, &crates[0].1).is_empty());
}
