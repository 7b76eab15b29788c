/**
 * The demo VM (`kvm-rx run` with no arguments, `npm start`): the embedded demo guest with its UART
 * on the terminal, driven by the worker runtime.
 *
 * @module
 */
import { extname, join } from 'node:path';
import { checkObject, invalidType } from '../abi/validate';
import { VcpuRuntime } from '../runtime/pool';
import type { RunOutcome } from '../runtime/vcpu-run';
import { GuestMemory } from '../wrappers/guest-memory';
import { Kvm } from '../wrappers/kvm';
import { DEMO_GUEST, DEMO_GUEST_ADDR } from './demo-guest';
import { zeroFilledRegs } from './regs';

/** The end of the demo guest's banner: from then on it takes input. */
const DEMO_READY = 'Ctrl-A x quits.\r\n';

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Receives what the guest writes to its serial port. */
  output: (bytes: Uint8Array) => void;
  /** Called once the guest runs: `send(bytes)` types into the guest's serial port. */
  onStart?: (send: (bytes: Uint8Array) => void) => void;
  /** Stops the VM. */
  signal?: AbortSignal;
  /** A runtime to use (default: a new one with one vCPU thread, closed at the end). */
  runtime?: VcpuRuntime;
}

/** How the demo ended. */
export interface DemoOutcome extends RunOutcome {
  /** The guest reset the machine (Ctrl-D in the demo guest): a clean end. */
  reset: boolean;
}

/**
 * Runs the demo guest until it resets the machine or `signal` aborts.
 *
 * @example
 * ```ts
 * const outcome = await runDemo({ output: (b) => process.stdout.write(b), onStart: (send) => send(Buffer.from('hi\x04')) });
 * ```
 */
export async function runDemo(options: DemoOptions): Promise<DemoOutcome> {
  checkObject('options', options);
  if (typeof options.output !== 'function') invalidType('options.output', 'of type function', options.output);
  if (options.onStart !== undefined && typeof options.onStart !== 'function')
    invalidType('options.onStart', 'of type function', options.onStart);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal))
    invalidType('options.signal', 'an AbortSignal', options.signal);
  if (options.runtime !== undefined && !(options.runtime instanceof VcpuRuntime))
    invalidType('options.runtime', 'a VcpuRuntime', options.runtime);
  const runtime = options.runtime ?? new VcpuRuntime({ maxVcpus: 1 });
  const mem = GuestMemory.anonymous(0x10000); // IVT, code at 0x1000, stack below 0x7000
  const kvm = new Kvm();
  try {
    const vm = kvm.createVm();
    vm.createIrqChip(); // the 8259 that turns the UART's IRQ 4 into an interrupt
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    mem.write(Number(DEMO_GUEST_ADDR), DEMO_GUEST);
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    sregs.cs.base = 0n;
    sregs.cs.selector = 0;
    vcpu.setSregs(sregs);
    vcpu.setRegs(zeroFilledRegs({ rip: DEMO_GUEST_ADDR, rflags: 2n }));
    const run = runtime.start(vcpu, {
      pipeline: join(__dirname, `demo-devices${extname(__filename)}`),
      signal: options.signal,
    });
    let reset = false;
    // The guest resets its UART's FIFOs while it starts: hold typed input until its banner is out.
    let printed = '';
    let ready = false;
    const held: Uint8Array[] = [];
    run.events$.subscribe(({ channel, data }) => {
      if (channel === 'tx') {
        options.output(data as Uint8Array);
        if (!ready) {
          printed += Buffer.from(data as Uint8Array).toString('latin1');
          if (printed.includes(DEMO_READY)) {
            ready = true;
            for (const b of held.splice(0)) run.send('stdin', b);
          }
        }
      } else if (channel === 'reset') reset = true;
    });
    options.onStart?.((bytes) => (ready ? run.send('stdin', bytes) : held.push(bytes)));
    const outcome = await run.done;
    return { ...outcome, reset };
  } finally {
    kvm.close();
    mem.close();
    if (options.runtime === undefined) await runtime.close();
  }
}
