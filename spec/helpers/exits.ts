/**
 * The specs' shorthands over the shipped test kit (`kvm-rx/testing`): real `VcpuExit` builders and
 * an error-normalising TestScheduler bound to jest's `expect`.
 */
import type { TestScheduler } from 'rxjs/testing';
import { exitTestScheduler } from '../../src/testing/marbles';
import { makeExit } from '../../src/testing/exits';

export const { ioOut, ioIn, mmioRead, mmioWrite, hlt, shutdown, irqWindowOpen } = makeExit;

/** A TestScheduler whose equality normalises errors to `{ name, code, message }`. */
export function newTestScheduler(): TestScheduler {
  return exitTestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** Bytes of `data` as a plain array (for readable assertions). */
export const bytesOf = (data: Uint8Array): number[] => Array.from(data);
