// Writes signed image URLs in imgproxy's format, one per line, made by imgproxy's own URL builder
// (@imgproxy/imgproxy-node): the same options for every source, so that imgpipe (base URL
// http://host:8080/v1/img/{key_id}, the tenant's signing key and salt) and imgproxy (its base URL,
// its IMGPROXY_KEY and IMGPROXY_SALT) get byte-identical processing options and paths, and only
// the base URL and the signature differ.
//
// Run through benches/web/signed_urls.sh, which installs the pinned builder first.
//
// Usage: node signed_urls.js --base URL --key HEX --salt HEX [--width 512] [--height 512]
//          [--type fill] [--quality 80] [--format jpg] [--source-as plain|base64]
//          SOURCE_URL...                      (the URLs go to stdout)
'use strict';

const { generateImageUrl } = require('@imgproxy/imgproxy-node');

const defaults = {
  base: null,
  key: null,
  salt: null,
  width: '512',
  height: '512',
  type: 'fill',
  quality: '80',
  format: 'jpg',
  'source-as': 'plain',
};

function fail(message) {
  process.stderr.write(`signed_urls.js: ${message}\n`);
  process.exit(2);
}

function parse(argv) {
  const options = { ...defaults };
  const sources = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) {
      sources.push(arg);
      continue;
    }
    const name = arg.slice(2);
    if (!(name in defaults)) fail(`unknown option ${arg}`);
    if (i + 1 >= argv.length) fail(`${arg} needs a value`);
    options[name] = argv[++i];
  }
  for (const name of ['base', 'key', 'salt']) {
    if (!options[name]) fail(`--${name} is required`);
  }
  for (const name of ['key', 'salt']) {
    if (!/^([0-9a-fA-F]{2})+$/.test(options[name])) fail(`--${name} must be hex`);
  }
  if (!['plain', 'base64'].includes(options['source-as'])) {
    fail('--source-as is plain or base64');
  }
  if (sources.length === 0) fail('no source URL given');
  return { options, sources };
}

const { options, sources } = parse(process.argv.slice(2));
const processing = {
  resize: {
    resizing_type: options.type,
    width: Number(options.width),
    height: Number(options.height),
  },
  quality: Number(options.quality),
  format: options.format,
};
for (const source of sources) {
  const url = generateImageUrl({
    endpoint: options.base,
    url: { value: source, displayAs: options['source-as'] },
    options: processing,
    key: options.key,
    salt: options.salt,
  });
  process.stdout.write(`${url}\n`);
}
