/**
 * The documentation names only files that are in the repository.
 *
 * Run: `npm run check:docs` (ts-node --transpile-only). Reads README.md, CHANGELOG.md,
 * CONTRIBUTING.md and docs/*.md and checks, outside fenced code blocks:
 * - every relative markdown link `[text](path)` and reference definition `[name]: path` (the
 *   `#fragment` is dropped), resolved against the markdown file's folder;
 * - every code span that is one path-like token starting with `src/`, `spec/`, `bench/`,
 *   `scripts/`, `native/`, `docs/`, `examples/`, `.ci/`, `shared/`, `./` or `../`, resolved against
 *   the repository root (`./` and `../` against the markdown file's folder). A `:line` suffix is
 *   dropped; `*`, `?` and `{a,b}` patterns must match at least one file.
 *
 * A path must name a file or folder that git tracks (or a new file not yet ignored, so work in
 * progress checks too) and that exists. Paths git ignores are build output (`docs/api/`,
 * `dist/`) and are accepted, built or not. A path outside the repository always fails. Prints
 * `file:line: message` per broken reference and exits 1 if there is any.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

const ROOT = resolve(__dirname, '..');
const DOCS = ['README.md', 'CHANGELOG.md', 'CONTRIBUTING.md'];
const PATH_PREFIX = /^(src|spec|bench|scripts|native|docs|examples|\.ci|shared)\/|^\.\.?\//;

export interface BrokenReference {
  file: string;
  line: number;
  ref: string;
  message: string;
}

/** The markdown files this check reads, repository-relative. */
export function docFiles(root = ROOT): string[] {
  const docs = existsSync(join(root, 'docs'))
    ? readdirSync(join(root, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .sort()
        .map((f) => `docs/${f}`)
    : [];
  return [...DOCS.filter((f) => existsSync(join(root, f))), ...docs];
}

/** The repository's files (tracked, or new and not ignored) that exist, repository-relative. */
export function repoFiles(root = ROOT): string[] {
  try {
    const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
      cwd: root,
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    return out.split('\0').filter((f) => f !== '' && existsSync(join(root, f)));
  } catch {
    // Not a git checkout: every file outside the usual build and dependency folders.
    const skip = new Set(['node_modules', '.git', 'build', 'dist', 'coverage', 'prebuilds']);
    const walk = (dir: string): string[] =>
      readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) => {
        const p = dir ? `${dir}/${e.name}` : e.name;
        if (e.isDirectory()) return skip.has(e.name) ? [] : walk(p);
        return [p];
      });
    return walk('');
  }
}

/** Whether git ignores `path` (build output such as `docs/api/`). */
function ignored(root: string, path: string): boolean {
  try {
    execFileSync('git', ['check-ignore', '-q', '--no-index', path], { cwd: root, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function globRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*' && pattern[i + 1] === '*') {
      re += '.*';
      i++;
      if (pattern[i + 1] === '/') i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '{') {
      const end = pattern.indexOf('}', i);
      re += `(${pattern
        .slice(i + 1, end)
        .split(',')
        .map((s) => s.replace(/[.+^$()|[\]\\]/g, '\\$&'))
        .join('|')})`;
      i = end;
    } else re += c.replace(/[.+^$()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}/?$`);
}

/** The references of one markdown text: `{ line, ref, base }`, base `'file'` or `'root'`. */
export function references(text: string): Array<{ line: number; ref: string; base: 'file' | 'root' }> {
  const out: Array<{ line: number; ref: string; base: 'file' | 'root' }> = [];
  let fence: string | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const f = /^\s*(`{3,}|~{3,})/.exec(raw);
    if (fence) {
      if (f && f[1].startsWith(fence)) fence = undefined;
      return;
    }
    if (f) {
      fence = f[1]!;
      return;
    }
    // Code spans first, so a link inside one (`[a](b)` as text) is not taken for a link.
    const spans: string[] = [];
    const prose = raw.replace(/(`+)(.+?)\1/g, (_m, _ticks: string, code: string) => {
      spans.push(code.trim());
      return ' ';
    });
    for (const m of prose.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g))
      out.push({ line, ref: m[1], base: 'file' });
    const def = /^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$/.exec(prose);
    if (def) out.push({ line, ref: def[1], base: 'file' });
    for (const code of spans) {
      if (/\s/.test(code) || !PATH_PREFIX.test(code)) continue;
      out.push({ line, ref: code, base: code.startsWith('.') && !code.startsWith('.ci/') ? 'file' : 'root' });
    }
  });
  return out;
}

/** Every reference of the documentation that names no file or folder of the repository. */
export function checkDocLinks(root = ROOT): BrokenReference[] {
  const files = repoFiles(root);
  const fileSet = new Set(files);
  const dirs = new Set<string>();
  for (const f of files) for (let d = dirname(f); d !== '.'; d = dirname(d)) dirs.add(d);
  const broken: BrokenReference[] = [];
  for (const doc of docFiles(root)) {
    for (const { line, ref, base } of references(readFileSync(join(root, doc), 'utf8'))) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(ref) || ref.startsWith('#')) continue; // URLs, anchors
      // `src/…` names the folder; `file.ts:12` the file.
      const bare = ref
        .replace(/[#?].*$/, '')
        .replace(/:\d+(-\d+)?$/, '')
        .replace(/(…|\.\.\.)$/, '');
      if (bare === '') continue;
      const abs = resolve(base === 'file' ? join(root, dirname(doc)) : root, decodeURI(bare));
      const rel = relative(root, abs).split(sep).join('/');
      const fail = (message: string): void => void broken.push({ file: doc, line, ref, message });
      if (rel === '' && bare.replace(/\/$/, '') !== '.' && !bare.startsWith('..')) continue;
      if (rel.startsWith('..') || resolve(abs) === resolve(root, '..')) {
        fail('is outside the repository');
        continue;
      }
      if (/[*?{]/.test(rel)) {
        const re = globRegExp(rel);
        if (!files.some((f) => re.test(f)) && ![...dirs].some((d) => re.test(d))) fail('matches no file');
        continue;
      }
      const path = rel.replace(/\/$/, '');
      if (fileSet.has(path) || dirs.has(path) || path === '') continue;
      if (ignored(root, bare.endsWith('/') ? `${path}/` : path)) continue; // build output, built or not
      fail(existsSync(abs) ? 'is not in the repository (untracked)' : 'does not exist');
    }
  }
  return broken;
}

function main(): number {
  const broken = checkDocLinks();
  for (const b of broken) console.log(`${b.file}:${b.line}: \`${b.ref}\` ${b.message}`);
  const docs = docFiles();
  console.log(
    `check:docs: ${docs.length} files, ` +
      (broken.length ? `${broken.length} broken references` : 'every referenced path is in the repository'),
  );
  return broken.length ? 1 : 0;
}

if (require.main === module) process.exitCode = main();
