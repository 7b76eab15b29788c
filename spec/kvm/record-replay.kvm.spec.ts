/**
 * Record a real exit stream through the worker runtime, then replay it on the mock: the same
 * pipeline must give the same answers.
 */
import { join } from 'node:path';
import { GUEST_ADDR, MEM_SIZE, SEED_GUEST } from '../../examples/seed-example';
import { MockBackend } from '../../src/backend/mock/index';
import { runInThread } from '../../src/runtime/in-thread';
import { replayScript } from '../../src/testing/replay';
import { VcpuRuntime } from '../../src/runtime/pool';
import { Kvm } from '../../src/wrappers/kvm';
import operatorPipeline from '../fixtures/operator-pipeline';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

describeKvm('record and replay', () => {
  it('replays a recorded run on the mock with the same answers', async () => {
    const runtime = new VcpuRuntime({ maxVcpus: 1 });
    // the seed example's guest and vCPU: rax 2, rbx 3 on entry
    const guest = realModeGuest(SEED_GUEST, {
      guestPhysAddr: GUEST_ADDR,
      memSize: MEM_SIZE,
      regs: { rax: 2n, rbx: 3n },
    });
    try {
      const { vcpu } = guest;
      const outcome = await runtime.start(vcpu, {
        pipeline: join(__dirname, '../fixtures/operator-pipeline.ts'),
        record: true,
      }).done;
      const recording = outcome.recording!;
      expect(recording.map((r) => r.kind)).toEqual(['IoOut', 'IoIn', 'MmioWrite', 'MmioRead', 'Hlt']);
      expect(recording[0]).toEqual({ kind: 'IoOut', port: 0x3f8, size: 1, count: 1, data: [0x35] });
      expect(recording[1]).toEqual({ kind: 'IoIn', port: 0x3f8, size: 1, count: 1, answer: [0x61] });

      // The same pipeline on the mock, fed the recorded exits.
      const backend = new MockBackend();
      const { script, expectedAnswers } = replayScript(recording);
      backend.vcpu(0).script(script);
      const mockVcpu = new Kvm({ backend }).createVm().createVcpu(0);
      const emitted: unknown[] = [];
      const replayed = await runInThread(mockVcpu, operatorPipeline, { onEmit: (_c, d) => emitted.push(d) });
      expect(replayed).toMatchObject({ reason: 'completed', exits: 5, lastExit: 'Hlt' });
      expect(backend.vcpu(0).answers).toEqual(expectedAnswers);
      expect(expectedAnswers).toEqual([
        { exit: 'IoIn(0x3f8)', answer: Uint8Array.of(0x61) },
        { exit: 'MmioRead(0x8000)', answer: Uint8Array.of(0x62) },
      ]);
      expect(emitted).toEqual(['5', { offset: 0, value: 0 }]);
    } finally {
      guest.close();
      await runtime.close();
    }
  });
});
