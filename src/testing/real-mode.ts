/**
 * `enterRealMode` for test guests (it lives in the VMM layer and is exported from `kvm-rx` too).
 *
 * @module
 */
export { enterRealMode } from '../vmm/real-mode';
