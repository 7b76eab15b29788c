/**
 * The mock backend: an in-memory KVM for tests. Exported to users as `kvm-rx/testing`.
 *
 * @module
 */
export { MockBackend, MockVcpuHandle, requestName } from './backend';
export * from './exits';
export type { AnsweredExit, MockKernelConfig, MockSlot, MockVcpu, MockVm, ScriptedExit } from './state';
