/**
 * The package.json that `npm pack` and `npm publish` put into the package
 * (`scripts/pack-manifest.ts`): what a consumer needs and nothing of the repository's tooling.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { consumerManifest } from '../../scripts/pack-manifest';

const ROOT = join(__dirname, '../..');
const read = (file: string): Record<string, unknown> =>
  JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as Record<string, unknown>;

describe('the packed package.json', () => {
  const manifest = read('package.json');
  const packed = consumerManifest(manifest);

  it('keeps only the install script (the addon build) and no devDependencies', () => {
    expect(packed.scripts).toEqual({ install: 'node-gyp-build' });
    expect(packed).not.toHaveProperty('devDependencies');
  });

  it('keeps every other field as it is', () => {
    const { scripts: _s, devDependencies: _d, ...rest } = manifest;
    const { scripts: _ps, ...packedRest } = packed;
    expect(packedRest).toEqual(rest);
  });

  it('drops the scripts field when no script is left, and leaves its input alone', () => {
    const dev = { name: 'x', scripts: { test: 'jest' }, devDependencies: { jest: '1' } };
    expect(consumerManifest(dev)).toEqual({ name: 'x' });
    expect(dev.scripts).toEqual({ test: 'jest' });
  });

  it('comes with a build that emits no source maps (they would point at unshipped sources)', () => {
    const build = read('tsconfig.build.json') as { compilerOptions: { sourceMap?: boolean } };
    expect(build.compilerOptions.sourceMap).toBe(false);
  });
});
