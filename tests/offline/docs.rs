//! The documentation tells the truth about what it can be checked against without a stack:
//! the configuration reference is the one the code generates, every relative link and `#anchor`
//! in every tracked Markdown file resolves, and every `imgpipe …` command line in a `sh` block
//! parses with the real command line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use clap::Parser as _;

#[allow(dead_code)] // only the parser is used here
#[path = "../../src/cli.rs"]
mod cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn configuration_reference_is_the_generated_one() {
    let committed = std::fs::read_to_string(root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let generated = imgpipe::config::reference::markdown();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_owned(), |n| format!("line {}", n + 1));
        panic!(
            "docs/configuration.md differs from the configuration types' doc comments and \
             defaults (first at {line}); regenerate it with `{}`",
            imgpipe::config::reference::REGENERATE
        );
    }
}

/// Every Markdown file of the repository: tracked ones when git can say, else every one under
/// the root outside hidden and build folders.
fn markdown_files() -> Vec<PathBuf> {
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|out| out.status.success() && !out.stdout.is_empty());
    let mut files: Vec<PathBuf> = match listed {
        Some(out) => String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|name| !name.is_empty())
            .map(PathBuf::from)
            .filter(|path| root().join(path).is_file())
            .collect(),
        None => {
            let mut found = Vec::new();
            walk(&root(), &mut found);
            found
        }
    };
    files.sort();
    assert!(
        files.iter().any(|f| f == Path::new("README.md")),
        "no README.md found among {files:?}"
    );
    files
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            walk(&path, found);
        } else if name.ends_with(".md") {
            found.push(path.strip_prefix(root()).unwrap().to_path_buf());
        }
    }
}

/// The text outside fenced code blocks, line by line (with 1-based line numbers).
fn prose(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((n + 1, strip_code_spans(line)));
        }
    }
    lines
}

fn strip_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// Link targets of one line: `[text](target)`, `![alt](target)` and `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = closing_paren(after) else {
            break;
        };
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    let trimmed = line.trim_start();
    let definition = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]: "))
        .and_then(|(_, target)| target.split_whitespace().next());
    if let Some(target) = definition {
        targets.push(target.to_owned());
    }
    targets
}

fn closing_paren(text: &str) -> Option<usize> {
    let mut depth = 0_usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// GitHub's anchor for a heading: the rendered text lower-cased, everything but letters,
/// digits, spaces, `-` and `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // A link in a heading renders as its text.
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](") {
            Some(close) => {
                text.push_str(&after[..close]);
                let target = &after[close + 2..];
                rest = closing_paren(target).map_or("", |end| &target[end + 1..]);
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings, duplicates numbered as GitHub numbers them.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#'));
        let count = seen.entry(base.clone()).or_default();
        anchors.push(if *count == 0 {
            base
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    return None; // outside the repository
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let dir = file.parent().unwrap_or(Path::new(""));
        for (line, content) in prose(&text) {
            for target in link_targets(&content) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = match target.split_once('#') {
                    Some((path, fragment)) => (path, Some(fragment)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() {
                    Some(file.clone())
                } else {
                    normalize(&dir.join(path.replace("%20", " ")))
                };
                let where_ = format!("{}:{line}: {target}", file.display());
                let Some(resolved) = resolved.filter(|p| root().join(p).exists()) else {
                    broken.push(format!("{where_} (no such file)"));
                    continue;
                };
                let Some(fragment) = fragment else { continue };
                if resolved.extension().is_some_and(|e| e == "md") {
                    let target_text = std::fs::read_to_string(root().join(&resolved)).unwrap();
                    if !anchors(&target_text).iter().any(|a| a == fragment) {
                        broken.push(format!(
                            "{where_} (no heading with anchor #{fragment} in {})",
                            resolved.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

/// Subcommands the docs show that another binary serves (`imgpipe-loadgen`); they are left to
/// that binary's own parser.
const OTHER_BINARIES: &[&str] = &["loadgen"];

/// Splits a shell command line into words: quotes group; a comment, a pipe (`|`), a list (`;`,
/// `&&`) or a redirection (`>`) ends the command.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            // A comment, a pipe, a list or a redirection ends the command.
            None if (c == '#' || c == '>') && !in_word => break,
            None if matches!(c, '|' | ';' | '&') => break,
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `imgpipe …` command lines in the `sh` blocks of a Markdown text, joined across `\`.
fn imgpipe_commands(text: &str) -> Vec<(usize, String)> {
    let mut commands = Vec::new();
    let mut fenced = false;
    let mut in_sh = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            fenced = !fenced;
            in_sh = fenced && matches!(info.trim(), "sh" | "bash" | "shell" | "console");
            continue;
        }
        if !in_sh {
            continue;
        }
        let (start, mut joined) = match pending.take() {
            Some((start, before)) => (start, before + " " + trimmed),
            None => {
                let command = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                if !command.starts_with("imgpipe ") {
                    continue;
                }
                (n + 1, command.to_owned())
            }
        };
        if joined.ends_with('\\') {
            joined.pop();
            pending = Some((start, joined));
        } else {
            commands.push((start, joined));
        }
    }
    commands
}

#[test]
fn every_imgpipe_command_in_the_docs_parses() {
    let mut refused = Vec::new();
    let mut parsed = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for (line, command) in imgpipe_commands(&text) {
            let words = shell_words(&command);
            if words
                .get(1)
                .is_some_and(|sub| OTHER_BINARIES.contains(&sub.as_str()))
            {
                continue;
            }
            match cli::Cli::try_parse_from(&words) {
                Ok(_) => parsed += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) =>
                {
                    parsed += 1;
                }
                Err(e) => refused.push(format!(
                    "{}:{line}: {command}\n    {}",
                    file.display(),
                    e.to_string().lines().next().unwrap_or_default()
                )),
            }
        }
    }
    assert!(
        parsed > 10,
        "only {parsed} commands found: is the parser broken?"
    );
    assert!(
        refused.is_empty(),
        "commands the CLI refuses:\n  {}",
        refused.join("\n  ")
    );
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug("Operating: `imgpipe ops`"),
        "operating-imgpipe-ops".to_owned()
    );
    assert_eq!(
        slug("Usage at scale (analysts, `GET /v1/usage`)"),
        "usage-at-scale-analysts-get-v1usage"
    );
    assert_eq!(
        slug("`usage_minute`, `usage_hour`, `usage_day`"),
        "usage_minute-usage_hour-usage_day"
    );
    assert_eq!(slug("[kafka]"), "kafka");
    assert_eq!(
        anchors("# A\n## A\n```sh\n# not a heading\n```\n## A"),
        ["a", "a-1", "a-2"]
    );
    assert_eq!(
        shell_words(r#"imgpipe ops tail usage.events --filter "tenant=a b"   # comment"#),
        [
            "imgpipe",
            "ops",
            "tail",
            "usage.events",
            "--filter",
            "tenant=a b"
        ]
    );
    assert_eq!(
        shell_words("imgpipe ops dlq list --tenant <id> | head > out"),
        ["imgpipe", "ops", "dlq", "list", "--tenant", "<id>"]
    );
}
