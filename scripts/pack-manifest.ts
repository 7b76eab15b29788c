/**
 * The package.json that goes into the package: only what a consumer needs.
 *
 * Run by npm's pack lifecycle (see "Packing and publishing" in CONTRIBUTING.md):
 * - `prepack` builds dist/ afresh, then `strip` saves package.json to `.package.json.packing` and
 *   writes it without what only a clone of the repository uses: every script but `install`
 *   (node-gyp-build, which builds the addon on the consumer's machine) and `devDependencies`.
 *   Without `prepare` in it, npm does not build a second time while packing.
 * - `postpack` runs `restore`, which puts the saved file back byte for byte. Under `npm publish`
 *   it leaves that to `postpublish`: npm reads package.json again after packing and sends it to
 *   the registry as the version's metadata, which must be the stripped one too.
 *
 * `strip` refuses to run while a saved file exists (a pack or publish failed before its restore):
 * `mv .package.json.packing package.json` puts it back (the stripped file has no script for it).
 * Prints what it did; exits 1 on a refusal.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(__dirname, '..');
const MANIFEST = join(ROOT, 'package.json');
const SAVED = join(ROOT, '.package.json.packing');
/** The scripts a consumer's npm runs: `install` builds the native addon when no prebuild matches. */
const KEEP_SCRIPTS = new Set(['install']);

/** The manifest a consumer gets: `manifest` without dev-only scripts and devDependencies. */
export function consumerManifest(manifest: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...manifest };
  delete out.devDependencies;
  const scripts = Object.entries((manifest.scripts ?? {}) as Record<string, string>).filter(([name]) =>
    KEEP_SCRIPTS.has(name),
  );
  if (scripts.length > 0) out.scripts = Object.fromEntries(scripts);
  else delete out.scripts;
  return out;
}

function strip(): void {
  if (existsSync(SAVED)) {
    console.error(
      `pack-manifest: ${SAVED} exists: an earlier pack or publish did not restore package.json. ` +
        'Put it back with `mv .package.json.packing package.json`, check it, then pack again.',
    );
    process.exit(1);
  }
  const text = readFileSync(MANIFEST, 'utf8');
  const manifest = JSON.parse(text) as Record<string, unknown>;
  writeFileSync(SAVED, text);
  writeFileSync(MANIFEST, `${JSON.stringify(consumerManifest(manifest), null, 2)}\n`);
  console.error('pack-manifest: package.json stripped for packing (dev scripts and devDependencies)');
}

function restore(): void {
  if (!existsSync(SAVED)) return; // nothing was stripped (e.g. npm pack --ignore-scripts)
  renameSync(SAVED, MANIFEST);
  console.error('pack-manifest: package.json restored');
}

if (require.main === module) {
  const [command, flag] = process.argv.slice(2);
  if (command === 'strip') strip();
  else if (command === 'restore' && flag === '--after-pack') {
    if (process.env.npm_command !== 'publish') restore();
  } else if (command === 'restore') restore();
  else {
    console.error('usage: pack-manifest.ts strip | restore [--after-pack]');
    process.exit(2);
  }
}
