/**
 * End-to-end: boots the Debian cloud vmlinux (+ busybox initramfs) fetched by `npm run guest:fetch`
 * (run first, here, when the guest is missing: a clean clone needs only `npm run e2e:linux`)
 * with `bootLinux()` (the worker runtime: the vCPU runs in a worker thread with the 16550A UART
 * model and its interrupt, the i8042, CMOS and the emulation-failure fallbacks), with the serial
 * console on stdout, and measures the time to `Run /init as init process`.
 *
 *   npm run e2e:linux    (env: GUEST_DIR, KERNEL, INITRD, CMDLINE, MEM_MIB, TIMEOUT_S, QUIET=1,
 *                         HUGEPAGES=1 for private THP-backed guest RAM)
 *
 * Success:
 *   - on a PVM host (no VMX/SVM: guest kernel code is emulated, and guest user space cannot make
 *     system calls, see shared notes): the `Run /init` line, then a clean VM reset (panic=-1 →
 *     reboot=k → i8042 0xFE, or a triple fault);
 *   - on a VMX/SVM host: `BOOT-OK <uptime>` printed by /init, then the reset.
 * Exits 0 on success, 1 otherwise.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostSummary } from '../src/vmm/doctor';
import { hostVirtualization, stockKernelCmdline } from '../src/vmm/host';
import { bootLinux, type LinuxVm } from '../src/vmm/linux';
import { runMain } from './run-main';

async function main(): Promise<number> {
  const root = join(__dirname, '..');
  const dir = process.env.GUEST_DIR ?? join(root, '.guest');
  const kernelPath = process.env.KERNEL ?? join(dir, 'vmlinux');
  const initrdPath = process.env.INITRD ?? join(dir, 'initramfs.cpio');
  if (!existsSync(kernelPath) && process.env.KERNEL === undefined) {
    // A clean clone: fetch and prepare the guest first (what `npm run guest:fetch` does).
    console.log(`no guest in ${dir} yet: fetching it (scripts/fetch-guest.sh)`);
    const fetched = spawnSync('bash', [join(root, 'scripts/fetch-guest.sh')], {
      stdio: 'inherit',
      env: { ...process.env, GUEST_DIR: dir },
    });
    if (fetched.status !== 0) {
      console.error(`fetching the guest failed (exit ${fetched.status ?? fetched.signal})`);
      return 1;
    }
  }
  if (!existsSync(kernelPath)) {
    console.error(`no kernel at ${kernelPath}`);
    return 1;
  }
  const mode = hostVirtualization();
  const emulated = mode === 'pvm' || mode === 'unknown';
  const cmdline = process.env.CMDLINE ?? stockKernelCmdline(mode);
  const memSize = Number(process.env.MEM_MIB ?? 256) << 20;
  const timeoutMs = Number(process.env.TIMEOUT_S ?? 600) * 1000;
  const quiet = process.env.QUIET === '1';
  console.log(
    `host: ${mode}${emulated ? ' (no hardware virtualisation: guest kernel code is emulated; success = "Run /init" + clean reset)' : ' (success = BOOT-OK from /init)'}`,
  );
  console.log(
    `kernel ${kernelPath}, initrd ${existsSync(initrdPath) ? initrdPath : '(none)'}, ${memSize >>> 20} MiB${process.env.HUGEPAGES === '1' ? ' (private, THP)' : ''}`,
  );
  console.log(`cmdline: ${cmdline}`);
  console.log(await hostSummary());
  console.log('VMM: bootLinux() (worker runtime, 16550A with IRQ 4, i8042, CMOS, emulation fallbacks)');

  const t0 = process.hrtime.bigint();
  const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu0 = process.cpuUsage();
  const cpuSecs = () => {
    const c = process.cpuUsage(cpu0);
    return { user: c.user / 1e6, system: c.system / 1e6 };
  };

  // Console: lines prefixed with host seconds since start; markers recorded.
  let line = '';
  const marks: {
    runInit?: number;
    runInitGuest?: number;
    runInitCpu?: number;
    bootOk?: string;
    bootOkAt?: number;
    panic?: string;
  } = {};
  const onLine = (l: string) => {
    const t = secs();
    if (!quiet) process.stdout.write(`[${t.toFixed(2).padStart(7)}] ${l}\n`);
    if (marks.runInit === undefined && l.includes('Run /init as init process')) {
      marks.runInit = t;
      const c = cpuSecs();
      marks.runInitCpu = c.user + c.system;
      const g = /^\[\s*(\d+\.\d+)\]/.exec(l);
      if (g) marks.runInitGuest = Number(g[1]);
    }
    const ok = /BOOT-OK\s+(\S+)/.exec(l);
    if (ok && marks.bootOk === undefined) {
      marks.bootOk = ok[1];
      marks.bootOkAt = t;
    }
    if (l.includes('Kernel panic') && marks.panic === undefined) marks.panic = l.replace(/^\[[^\]]*\]\s*/, '');
  };
  const output = (bytes: Uint8Array) => {
    for (const b of bytes) {
      if (b === 0x0a) {
        onLine(line);
        line = '';
      } else if (b !== 0x0d) line += String.fromCharCode(b);
    }
  };

  let vm: LinuxVm;
  try {
    vm = bootLinux({
      kernel: readFileSync(kernelPath),
      ...(existsSync(initrdPath) ? { initrd: readFileSync(initrdPath) } : {}),
      cmdline,
      memSize,
      ...(process.env.HUGEPAGES === '1' ? { memory: { shared: false, hugePages: 'madvise' as const } } : {}),
      trace: true,
      output,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    console.error(`cannot boot: ${(e as Error).message}`);
    return 1;
  }
  const boot = vm.boot;
  console.log(
    `machine ready in ${(secs() * 1000).toFixed(0)} ms: ${boot.kind} entry 0x${boot.entry.toString(16)}, kernel 0x${boot.kernel.low.toString(16)}–0x${boot.kernel.high.toString(16)}` +
      (boot.initrd ? `, initrd ${boot.initrd.size} B at 0x${boot.initrd.addr.toString(16)}` : ''),
  );
  const outcome = await vm.done;
  if (line) onLine(line);
  const total = secs();

  let end: string;
  switch (outcome.reason) {
    case 'reset':
      end = outcome.resetBy === 'i8042' ? 'i8042 reset (0xfe → port 0x64)' : 'triple fault (Shutdown exit)';
      break;
    case 'halt':
      end = 'HLT exit';
      break;
    case 'stopped':
      end = `timeout after ${(timeoutMs / 1000).toFixed(0)} s`;
      break;
    case 'error':
      end = `error: ${outcome.error?.message}`;
      break;
  }
  const s = outcome.stats;
  console.log('--- e2e:linux summary ---');
  console.log(`host mode: ${mode}`);
  const cpu = cpuSecs();
  console.log(
    `end: ${end} after ${total.toFixed(2)} s wall, CPU ${cpu.system.toFixed(2)} s system + ${cpu.user.toFixed(2)} s user`,
  );
  console.log(
    `Run /init: ${marks.runInit !== undefined ? `${marks.runInit.toFixed(2)} s wall, ${marks.runInitCpu!.toFixed(2)} s CPU (guest ${marks.runInitGuest?.toFixed(2) ?? '?'} s)` : 'not reached'}`,
  );
  console.log(
    `BOOT-OK: ${marks.bootOk !== undefined ? `uptime ${marks.bootOk} (wall ${marks.bootOkAt!.toFixed(2)} s)` : 'not printed'}`,
  );
  if (marks.panic) console.log(`panic: ${marks.panic}`);
  console.log(
    `exits to userspace: ${outcome.exits}${
      s
        ? ` (${Object.entries(s.counts)
            .map(([k, n]) => `${k} ${n}`)
            .join(', ')})`
        : ''
    }`,
  );
  if (s) {
    console.log(
      `  mean time between exits ${(s.latency.meanMs * 1000).toFixed(1)} µs (guest run + handling; max ${s.latency.maxMs.toFixed(1)} ms)`,
    );
    console.log(
      `  ports by exit count: ${Object.entries(s.ports)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 10)
        .map(([p, n]) => `${p}×${n}`)
        .join(' ')}`,
    );
  }
  console.log(`open-bus accesses (no device model): ${outcome.openBus}`);
  const emu = outcome.emulation;
  console.log(`emulation fallbacks: int3 ${emu.int3}, fwait ${emu.fwait}, clac ${emu.clac}, stac ${emu.stac}`);
  const cleanEnd = outcome.reason === 'reset';
  let ok: boolean;
  if (emulated) {
    ok = marks.runInit !== undefined && cleanEnd;
    console.log(
      ok
        ? `PASS (${mode}): kernel reached init in ${marks.runInit!.toFixed(2)} s and the VM reset cleanly` +
            (marks.bootOk
              ? '; /init printed BOOT-OK too'
              : '; BOOT-OK is not expected here (guest user space cannot make syscalls on this host)')
        : `FAIL (${mode})`,
    );
  } else {
    ok = marks.bootOk !== undefined && cleanEnd;
    console.log(ok ? `PASS (${mode}): BOOT-OK at guest uptime ${marks.bootOk}` : `FAIL (${mode}): BOOT-OK not seen`);
  }
  if (outcome.error !== undefined && !ok) console.error(outcome.error);
  console.log('The same boot with a C VMM, for the ratio on this machine: npm run bench:boot');
  if (process.env.E2E_JSON) {
    // For bench/boot.ts: the figures it compares with the C baseline.
    const summary = {
      ok,
      mode,
      reason: outcome.reason,
      runInitWall: marks.runInit ?? null,
      runInitGuest: marks.runInitGuest ?? null,
      totalWall: total,
      cpuSystem: cpu.system,
      cpuUser: cpu.user,
      exits: outcome.exits,
    };
    writeFileSync(process.env.E2E_JSON, JSON.stringify(summary) + '\n');
  }
  return ok ? 0 : 1;
}

runMain(main);
