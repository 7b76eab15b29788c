/**
 * Counts for the reliability specs: bounded in `npm test`, full in `npm run stress`
 * (`KVMRX_STRESS=1`). Each spec states both next to what it measures.
 */
export const STRESS = process.env.KVMRX_STRESS === '1';

/** `bounded` in `npm test`, `full` under `npm run stress`. */
export function count(bounded: number, full: number): number {
  return STRESS ? full : bounded;
}

/** A jest timeout that grows with the stress counts. */
export function timeout(boundedMs: number, fullMs: number): number {
  return STRESS ? fullMs : boundedMs;
}
