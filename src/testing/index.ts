/**
 * `kvm-rx/testing`: test your VMM code without `/dev/kvm`.
 *
 * - {@link MockBackend}: an in-memory KVM behind the same `IoctlBackend` interface as the real
 *   one: `new Kvm({ backend: new MockBackend() })`.
 * - Exit builders (`ioOut`, `ioIn`, `mmioRead`, `mmioWrite`, `hlt`, …) to script what `KVM_RUN` reports.
 * - For marble tests of pipelines: {@link makeExit} (real `VcpuExit`s), {@link exitTestScheduler}
 *   (compares errors by name, code and message) and {@link collectHolds} (the holds a runner sees).
 * - {@link runInThread} and {@link vcpuExits}: run a pipeline on this thread, on the mock or on KVM.
 *
 * @packageDocumentation
 */
export * from '../backend/mock/index';
export { runInThread, vcpuExits } from '../runtime/in-thread';
export type { InThreadOptions } from '../runtime/in-thread';
export { replayScript } from './replay';
export { makeExit } from './exits';
export { exitTestScheduler, collectHolds, normaliseErrors } from './marbles';
export { enterRealMode } from './real-mode';
export { enterLongMode } from '../vmm/long-mode';
export { loopInitElf, loopInitramfs } from './loop-init';
export type { Replay } from './replay';
export type { RecordedExit } from '../runtime/recording';
export type { MockMapping } from '../backend/mock/state';
