/**
 * Type-checks the TypeScript examples of the documentation, so they cannot drift from the API.
 *
 * Run: `npm run check:examples` (ts-node --transpile-only). It exits 1 and prints
 * `file:line:column TSnnnn message` for every error, at the snippet's place in its source file.
 *
 * What is checked:
 * - every fenced block whose info string starts with `ts` or `typescript` in README.md,
 *   CONTRIBUTING.md and docs/*.md;
 * - every `@example` of a TSDoc comment in src/**\/*.ts: its fenced blocks (```ts, ```typescript or
 *   a fence without a language), plain code after the tag when it has no fence, and the inline form
 *   `@example \`expression\`` (the first code span after the tag; prose after it is not code).
 *
 * How a snippet is compiled (the convention examples are written to):
 * - Each snippet is an ES module of its own (top-level `await` and `using` allowed), compiled with
 *   the TypeScript compiler API under `strict: true`, target ES2022, `moduleResolution: bundler`,
 *   the types of Node and jest, and `paths` mapping `kvm-rx` to src/index.ts and `kvm-rx/testing`
 *   to src/testing/index.ts; rxjs comes from node_modules.
 * - A markdown snippet imports what it uses, as a reader would have to.
 * - A TSDoc snippet sees, without importing them, the exports of `kvm-rx`, of `kvm-rx/testing` and
 *   of the module it is written in (it documents that API); names it declares or imports itself win.
 * - Every snippet may use these objects, the ones the documentation talks about throughout, without
 *   declaring them (a snippet's own declaration of the name takes precedence):
 *   `kvm: Kvm`, `vm: VmFd`, `vcpu: VcpuFd`, `mem: GuestMemory`, `evt: EventFd`, `dev: DeviceFd`,
 *   `run: VcpuRun`, `exits$: Observable<VcpuExit>` and `backend: MockBackend`.
 * - Anything else a fragment assumes goes in set-up lines at its start, one declaration or import
 *   per line: `// @ts-setup: declare const bytes: Uint8Array;`. The code after `@ts-setup:` is
 *   compiled in place of the comment; the reader sees a comment saying what the snippet assumes.
 *   A `// @ts-setup:` line after the first line of code is an error.
 * - Nothing is skipped: a block that is not TypeScript (shell, output) must not be fenced as `ts`.
 *
 * CONTRIBUTING.md ("Examples in the documentation") says the same for writers of docs.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import * as ts from 'typescript';

const ROOT = resolve(__dirname, '..');
const SETUP = /^(\s*)\/\/\s*@ts-setup:\s?(.*)$/;

/** The objects every snippet may use without declaring them (see the header). */
export const AMBIENT: ReadonlyArray<readonly [name: string, type: string]> = [
  ['kvm', "import('kvm-rx').Kvm"],
  ['vm', "import('kvm-rx').VmFd"],
  ['vcpu', "import('kvm-rx').VcpuFd"],
  ['mem', "import('kvm-rx').GuestMemory"],
  ['evt', "import('kvm-rx').EventFd"],
  ['dev', "import('kvm-rx').DeviceFd"],
  ['run', "import('kvm-rx').VcpuRun"],
  ['exits$', "import('rxjs').Observable<import('kvm-rx').VcpuExit>"],
  ['backend', "import('kvm-rx/testing').MockBackend"],
];

/** One line of a snippet and where it is in its source file (1-based line, 0-based column). */
interface SnippetLine {
  text: string;
  line: number;
  col: number;
}

export interface Snippet {
  /** Repository-relative path of the markdown or TypeScript file. */
  file: string;
  kind: 'markdown' | 'tsdoc';
  lines: SnippetLine[];
}

const isTsInfo = (info: string): boolean => /^(ts|typescript)$/i.test(info.split(/[\s{]/)[0] ?? '');

/** The fenced blocks of markdown lines whose info string `accept`s, each line with its place. */
function fencedBlocks(
  lines: readonly SnippetLine[],
  accept: (info: string) => boolean,
): Array<{ info: string; lines: SnippetLine[] }> {
  const out: Array<{ info: string; lines: SnippetLine[] }> = [];
  let open: { fence: string; indent: number; info: string; lines: SnippetLine[] } | undefined;
  for (const l of lines) {
    const m = /^(\s*)(`{3,}|~{3,})\s*([^`]*)$/.exec(l.text);
    if (open) {
      if (m && m[2].startsWith(open.fence) && m[3].trim() === '') {
        if (accept(open.info)) out.push({ info: open.info, lines: open.lines });
        open = undefined;
      } else {
        const strip = Math.min(open.indent, /^\s*/.exec(l.text)![0].length);
        open.lines.push({ text: l.text.slice(strip), line: l.line, col: l.col + strip });
      }
    } else if (m) {
      open = { fence: m[2], indent: m[1].length, info: m[3].trim(), lines: [] };
    }
  }
  return out;
}

/** The TypeScript blocks of a markdown file. */
export function markdownSnippets(file: string, text: string): Snippet[] {
  const lines = text.split('\n').map((t, i) => ({ text: t, line: i + 1, col: 0 }));
  return fencedBlocks(lines, isTsInfo).map((b) => ({ file, kind: 'markdown' as const, lines: b.lines }));
}

/** The `/** … *\/` comments of a TypeScript file, found through the parser (not inside strings). */
function docComments(sf: ts.SourceFile): ts.CommentRange[] {
  const seen = new Map<number, ts.CommentRange>();
  const visit = (node: ts.Node): void => {
    for (const r of ts.getLeadingCommentRanges(sf.text, node.pos) ?? []) {
      if (r.kind === ts.SyntaxKind.MultiLineCommentTrivia && sf.text.startsWith('/**', r.pos)) seen.set(r.pos, r);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  for (const r of ts.getLeadingCommentRanges(sf.text, sf.endOfFileToken.pos) ?? []) {
    if (r.kind === ts.SyntaxKind.MultiLineCommentTrivia && sf.text.startsWith('/**', r.pos)) seen.set(r.pos, r);
  }
  return [...seen.values()].sort((a, b) => a.pos - b.pos);
}

/** The `@example` snippets of a TypeScript file's TSDoc comments. */
export function tsdocSnippets(file: string, text: string): Snippet[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: Snippet[] = [];
  for (const range of docComments(sf)) {
    const start = sf.getLineAndCharacterOfPosition(range.pos);
    // The comment's lines without the `/**`, `*/` and leading ` * `, each with its place in the file.
    const lines: SnippetLine[] = text
      .slice(range.pos, range.end)
      .split('\n')
      .map((raw, i) => {
        let col = i === 0 ? start.character : 0;
        let t = raw;
        if (i === 0) {
          t = t.slice(3);
          col += 3;
        } else {
          const m = /^\s*\*(?!\/) ?/.exec(t);
          if (m) {
            t = t.slice(m[0].length);
            col += m[0].length;
          }
        }
        const close = t.lastIndexOf('*/');
        if (close >= 0 && raw.trimEnd().endsWith('*/')) t = t.slice(0, close);
        return { text: t.trimEnd(), line: start.line + i + 1, col };
      });
    let inFence = false;
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i];
      if (/^\s*(`{3,}|~{3,})/.test(l.text)) inFence = !inFence;
      if (inFence) continue;
      const at = l.text.search(/@example\b/);
      if (at < 0) continue;
      const rest = l.text.slice(at + '@example'.length);
      const inline = /^\s*`([^`]+)`/.exec(rest);
      if (inline) {
        const code = inline[1];
        const col = l.col + at + '@example'.length + rest.indexOf('`') + 1;
        out.push({ file, kind: 'tsdoc', lines: [{ text: code, line: l.line, col }] });
        continue;
      }
      // The tag's body: the following lines up to the next block tag outside a fence.
      const body: SnippetLine[] = [];
      let fence = false;
      for (let j = i + 1; j < lines.length; j++) {
        const b = lines[j];
        if (/^\s*(`{3,}|~{3,})/.test(b.text)) fence = !fence;
        if (!fence && /^\s*@[a-zA-Z]+/.test(b.text)) break;
        body.push(b);
      }
      const blocks = fencedBlocks(body, (info) => info === '' || isTsInfo(info));
      const hasFence = body.some((b) => /^\s*(`{3,}|~{3,})/.test(b.text));
      if (blocks.length > 0) {
        for (const b of blocks) out.push({ file, kind: 'tsdoc', lines: b.lines });
      } else if (!hasFence) {
        const code = body.filter((b, k) => b.text.trim() !== '' || body.slice(k).some((x) => x.text.trim() !== ''));
        if (code.some((b) => b.text.trim() !== '')) out.push({ file, kind: 'tsdoc', lines: code });
      }
      // A fence in another language (```sh, ```text) is not a TypeScript example.
    }
  }
  return out;
}

/** Names a snippet declares or imports at its top level (they win over the implicit imports). */
function topLevelNames(code: string): Set<string> {
  const sf = ts.createSourceFile('snippet.ts', code, ts.ScriptTarget.Latest, false);
  const names = new Set<string>();
  const bind = (n: ts.BindingName): void => {
    if (ts.isIdentifier(n)) names.add(n.text);
    else for (const e of n.elements) if (!ts.isOmittedExpression(e)) bind(e.name);
  };
  for (const s of sf.statements) {
    if (ts.isImportDeclaration(s) && s.importClause) {
      const c = s.importClause;
      if (c.name) names.add(c.name.text);
      if (c.namedBindings && ts.isNamespaceImport(c.namedBindings)) names.add(c.namedBindings.name.text);
      if (c.namedBindings && ts.isNamedImports(c.namedBindings))
        for (const e of c.namedBindings.elements) names.add(e.name.text);
    } else if (ts.isImportEqualsDeclaration(s)) names.add(s.name.text);
    else if (ts.isVariableStatement(s)) for (const d of s.declarationList.declarations) bind(d.name);
    else if (
      (ts.isFunctionDeclaration(s) ||
        ts.isClassDeclaration(s) ||
        ts.isInterfaceDeclaration(s) ||
        ts.isTypeAliasDeclaration(s) ||
        ts.isEnumDeclaration(s) ||
        ts.isModuleDeclaration(s)) &&
      s.name &&
      ts.isIdentifier(s.name)
    )
      names.add(s.name.text);
  }
  return names;
}

function walk(dir: string, keep: (path: string) => boolean): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p, keep));
    else if (keep(p)) out.push(p);
  }
  return out.sort();
}

/** Every snippet of README.md, docs/*.md and src/**\/*.ts. */
export function collectSnippets(root = ROOT): Snippet[] {
  const rel = (p: string): string => relative(root, p);
  const md = [
    join(root, 'README.md'),
    join(root, 'CONTRIBUTING.md'),
    ...walk(join(root, 'docs'), (p) => /^[^/]*\.md$/.test(relative(join(root, 'docs'), p))),
  ];
  const src = walk(join(root, 'src'), (p) => p.endsWith('.ts') && !p.endsWith('.d.ts'));
  return [
    ...md.flatMap((f) => markdownSnippets(rel(f), readFileSync(f, 'utf8'))),
    ...src.flatMap((f) => tsdocSnippets(rel(f), readFileSync(f, 'utf8'))),
  ];
}

export interface ExampleFailure {
  /** `file:line:column` of the error in the snippet's source file. */
  where: string;
  code: number;
  message: string;
  /** Index of the snippet in the list given to {@link checkSnippets}. */
  snippet: number;
}

export function compilerOptions(root = ROOT): ts.CompilerOptions {
  return {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2024.d.ts', 'lib.esnext.disposable.d.ts'],
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    esModuleInterop: true,
    types: ['node', 'jest'],
    typeRoots: [join(root, 'node_modules/@types')],
    paths: {
      'kvm-rx': [join(root, 'src/index.ts')],
      'kvm-rx/testing': [join(root, 'src/testing/index.ts')],
      rxjs: [join(root, 'node_modules/rxjs')],
      'rxjs/*': [join(root, 'node_modules/rxjs/*')],
    },
  };
}

/** Type-checks the snippets; returns the errors, placed in the snippets' source files. */
export function checkSnippets(snippets: readonly Snippet[], root = ROOT): ExampleFailure[] {
  const failures: ExampleFailure[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-examples-'));
  try {
    const options = compilerOptions(root);
    // The implicit imports of TSDoc snippets: the exports of the package entry points and of the
    // snippet's own module, read from a program over those files.
    const modules = [...new Set(snippets.filter((s) => s.kind === 'tsdoc').map((s) => join(root, s.file)))];
    const entry = [join(root, 'src/index.ts'), join(root, 'src/testing/index.ts')];
    const base = ts.createProgram([...entry, ...modules], options);
    const checker = base.getTypeChecker();
    const exportsOf = (path: string): string[] => {
      const sf = base.getSourceFile(path);
      const sym = sf && checker.getSymbolAtLocation(sf);
      return sym
        ? checker
            .getExportsOfModule(sym)
            .map((e) => e.name)
            .filter((n) => n !== 'default')
        : [];
    };
    const rootExports = exportsOf(entry[0]);
    const testingExports = exportsOf(entry[1]);

    const ambient = join(dir, 'ambient.d.ts');
    writeFileSync(ambient, AMBIENT.map(([n, t]) => `declare const ${n}: ${t};`).join('\n') + '\n');
    const files: Array<{ path: string; snippet: Snippet; lines: SnippetLine[] }> = [];
    snippets.forEach((snippet, i) => {
      const lines: SnippetLine[] = [];
      let codeSeen = false;
      for (const l of snippet.lines) {
        const m = SETUP.exec(l.text);
        if (m && !codeSeen) {
          lines.push({ text: m[1] + m[2], line: l.line, col: l.col });
        } else {
          if (m) {
            failures.push({
              where: `${snippet.file}:${l.line}:${l.col + 1}`,
              code: 0,
              message: '`// @ts-setup:` lines must come before the first line of code',
              snippet: i,
            });
          }
          if (l.text.trim() !== '') codeSeen = true;
          lines.push(l);
        }
      }
      const body = lines.map((l) => l.text).join('\n');
      let prelude = '';
      if (snippet.kind === 'tsdoc') {
        const own = topLevelNames(body);
        const taken = new Set(own);
        const from = (names: readonly string[], spec: string): string => {
          const pick = names.filter((n) => !taken.has(n));
          for (const n of pick) taken.add(n);
          return pick.length ? `import { ${pick.join(', ')} } from ${JSON.stringify(spec)}; ` : '';
        };
        const self = './' + relative(dir, join(root, snippet.file)).replace(/\.ts$/, '');
        prelude =
          from(rootExports, 'kvm-rx') +
          from(testingExports, 'kvm-rx/testing') +
          from(exportsOf(join(root, snippet.file)), self);
      }
      const path = join(dir, `snippet-${String(i).padStart(3, '0')}.ts`);
      // Line 1 is the prelude (maybe empty), so snippet line k is line k + 1 of the module.
      writeFileSync(path, `${prelude}\n${body}\nexport {};\n`);
      files.push({ path, snippet, lines });
    });

    const program = ts.createProgram([ambient, ...files.map((f) => f.path)], options);
    for (const d of program.getOptionsDiagnostics().concat(program.getGlobalDiagnostics())) {
      failures.push({
        where: '(compiler options)',
        code: d.code,
        message: ts.flattenDiagnosticMessageText(d.messageText, '\n'),
        snippet: -1,
      });
    }
    for (const [index, f] of files.entries()) {
      const sf = program.getSourceFile(f.path)!;
      const diags = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
      for (const d of diags) {
        const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
        const pos = d.start === undefined ? undefined : sf.getLineAndCharacterOfPosition(d.start);
        const l = pos && pos.line >= 1 ? f.lines[pos.line - 1] : undefined;
        const where = l
          ? `${f.snippet.file}:${l.line}:${l.col + pos!.character + 1}`
          : `${f.snippet.file}:${f.snippet.lines[0]?.line ?? 0} (snippet${pos?.line === 0 ? ' prelude' : ''})`;
        failures.push({ where, code: d.code, message, snippet: index });
      }
    }
    for (const d of program
      .getSemanticDiagnostics()
      .filter((x) => x.file && !files.some((f) => f.path === x.file!.fileName))) {
      if (d.file!.fileName === ambient) continue;
      const pos = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
      failures.push({
        where: `${relative(root, d.file!.fileName)}:${pos.line + 1}:${pos.character + 1}`,
        code: d.code,
        message: ts.flattenDiagnosticMessageText(d.messageText, '\n'),
        snippet: -1,
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return failures;
}

/** `file:line:col` sort key: file, then line and column as numbers. */
function byPlace(a: ExampleFailure, b: ExampleFailure): number {
  const pa = a.where.split(':');
  const pb = b.where.split(':');
  return (
    pa[0].localeCompare(pb[0]) || Number(pa[1] ?? 0) - Number(pb[1] ?? 0) || Number(pa[2] ?? 0) - Number(pb[2] ?? 0)
  );
}

function main(): number {
  const snippets = collectSnippets();
  const failures = checkSnippets(snippets).sort(byPlace);
  for (const f of failures)
    console.log(`${f.where} ${f.code ? `TS${f.code}` : 'error'}: ${f.message.replace(/\n/g, '\n    ')}`);
  const files = new Set(snippets.map((s) => s.file)).size;
  const failed = new Set(failures.map((f) => f.snippet)).size;
  console.log(
    `check:examples: ${snippets.length} snippets in ${files} files, ` +
      (failures.length ? `${failures.length} errors in ${failed} snippets` : 'all type-check'),
  );
  return failures.length ? 1 : 0;
}

if (require.main === module) process.exitCode = main();
