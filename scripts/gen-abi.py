#!/usr/bin/env python3
"""Generate kvm-rx's ABI tables from the installed <linux/kvm.h>.

Run after a kernel-header upgrade: `python3 scripts/gen-abi.py` (needs gcc and gdb).

Field names and types are read from the C compiler's debug info (gdb `ptype`); every number
(offset, size, ioctl request, constant) is computed by the C compiler itself. Writes:
  native/src/abi_gen.inc  -- the addon's table entries (offsetof/sizeof/macros, evaluated by gcc)
  src/abi/layouts.ts      -- struct layouts and interfaces for the TypeScript codecs
  src/abi/kvm-constants.ts -- ioctl request numbers and KVM_* constants
spec/abi.spec.ts checks the TypeScript tables against the addon's, so they cannot drift.
"""
import os, re, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT = os.path.join(ROOT, 'native/src/kvm_compat.h')

STRUCTS = '''kvm_regs kvm_sregs kvm_segment kvm_dtable kvm_fpu kvm_userspace_memory_region
kvm_userspace_memory_region2 kvm_cpuid2 kvm_cpuid_entry2 kvm_msrs kvm_msr_entry kvm_msr_list kvm_lapic_state
kvm_mp_state kvm_xsave kvm_xcrs kvm_xcr kvm_debugregs kvm_vcpu_events kvm_guest_debug kvm_guest_debug_arch
kvm_translation kvm_sync_regs kvm_irqchip kvm_pic_state kvm_ioapic_state kvm_pit_config kvm_pit_state2
kvm_pit_channel_state kvm_clock_data kvm_msr_filter kvm_msr_filter_range kvm_msi kvm_irq_routing
kvm_irq_routing_entry kvm_ioeventfd kvm_dirty_log kvm_irqfd kvm_irq_level kvm_create_device kvm_device_attr
kvm_enable_cap kvm_create_guest_memfd kvm_memory_attributes kvm_enc_region kvm_sev_cmd
kvm_coalesced_mmio_zone kvm_coalesced_mmio kvm_coalesced_mmio_ring kvm_nested_state kvm_run kvm_one_reg
kvm_reg_list kvm_signal_mask kvm_debug_exit_arch kvm_irq_routing_irqchip kvm_irq_routing_msi
kvm_vmx_nested_state_hdr kvm_svm_nested_state_hdr kvm_vmx_nested_state_data kvm_svm_nested_state_data'''.split()

SYS = ['O_RDWR', 'O_CLOEXEC', 'O_NONBLOCK', 'EFD_NONBLOCK', 'EFD_SEMAPHORE', 'EFD_CLOEXEC', 'FD_CLOEXEC',
       'MADV_HUGEPAGE', 'MADV_DONTNEED', 'EHWPOISON', 'ERFKILL', 'EKEYEXPIRED', 'ENOTRECOVERABLE',
       'TUNSETIFF', 'TUNSETVNETHDRSZ', 'TUNSETOFFLOAD', 'IFF_TAP', 'IFF_NO_PI', 'IFF_VNET_HDR']

SCALARS = {
    '__u8': 'u8', 'unsigned char': 'u8', 'char': 'u8', '__s8': 'i8', 'signed char': 'i8',
    '__u16': 'u16', 'unsigned short': 'u16', '__s16': 'i16', 'short': 'i16',
    '__u32': 'u32', 'unsigned int': 'u32', '__s32': 'i32', 'int': 'i32',
    '__u64': 'u64', 'unsigned long long': 'u64', 'unsigned long': 'u64', '__s64': 'i64',
    'long long': 'i64', 'long': 'i64',
}

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout

def compile_and_run(src, tmp, name):
    c = os.path.join(tmp, name + '.c')
    exe = os.path.join(tmp, name)
    open(c, 'w').write(src)
    r = subprocess.run(['gcc', '-std=gnu11', '-w', '-fmax-errors=0', '-o', exe, c], capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return run([exe]), None

# ---- parse gdb ptype /o ------------------------------------------------------------------------
MEMBER = re.compile(r'^/\*.*?\*/\s*(.*)$')

class Node:
    def __init__(self, kind, cname=None):
        self.kind = kind          # 'struct' | 'union' | 'scalar'
        self.cname = cname        # C tag name for named structs
        self.name = None          # member name (None: anonymous)
        self.dims = []            # array dimensions ([] scalar; [0] flexible)
        self.children = []
        self.scalar = None
        self.bitfield = False

def parse(text):
    lines = [l.rstrip() for l in text.splitlines()]
    root = None
    stack = []
    for line in lines:
        s = line.strip()
        if not s:
            continue
        m = re.match(r'^/\* offset\s*\|\s*size \*/\s*type = (struct|union) (\w+) \{$', s)
        if m:
            root = Node(m.group(1), m.group(2))
            stack = [root]
            continue
        mm = MEMBER.match(s)
        if mm and s.startswith('/*') and not s.startswith('/* XXX') and not s.startswith('/* total'):
            body = mm.group(1)
            am = re.match(r'^(struct|union)(?: (\w+))? \{$', body)
            if am:
                n = Node(am.group(1), am.group(2))
                stack[-1].children.append(n)
                stack.append(n)
                continue
            pm = re.match(r'^(.+?)\s*\*\s*(\w+);$', body)
            if pm:
                n = Node('scalar')
                n.name = pm.group(2)
                n.scalar = 'u64'   # a user-space pointer, carried as a 64-bit address
                stack[-1].children.append(n)
                continue
            fm = re.match(r'^(.+?)\s+(\w+)((?:\[\d*\])*)(\s*:\s*\d+)?;$', body)
            if not fm:
                raise SystemExit('cannot parse member: ' + body)
            typ, name, dims, bits = fm.groups()
            n = Node('scalar')
            n.name = name
            n.dims = [int(d) if d else 0 for d in re.findall(r'\[(\d*)\]', dims)]
            n.bitfield = bool(bits)
            if typ.startswith('struct ') or typ.startswith('union '):
                n.kind = 'ref'
                n.cname = typ.split(' ', 1)[1]
                if n.cname not in STRUCTS:
                    raise SystemExit('unexpanded aggregate member of unlisted type: ' + body)
                stack[-1].children.append(n)
                continue
            if typ not in SCALARS:
                raise SystemExit('unknown scalar type: ' + typ)
            n.scalar = SCALARS[typ]
            stack[-1].children.append(n)
            continue
        cm = re.match(r'^\}\s*(\w+)?((?:\[\d*\])*);$', s)
        if cm:
            n = stack.pop()
            n.name = cm.group(1)
            n.dims = [int(d) if d else 0 for d in re.findall(r'\[(\d*)\]', cm.group(2) or '')]
            continue
        if s == '}' and len(stack) == 1:
            stack.pop()
            continue
    return root

def camel(name):
    parts = name.split('_')
    return parts[0] + ''.join(p[:1].upper() + p[1:] for p in parts[1:])

def pascal(name):
    return ''.join(p[:1].upper() + p[1:] for p in name.split('_'))

SKIP = re.compile(r'^(__.*|pad\d*|padding\d*|_pad\d*|reserved\d*|reserve|__empty_\w+)$')

def walk(node, path, out, struct):
    """Collect (path, node) for every named member, with C access paths."""
    for ch in node.children:
        if ch.bitfield or (ch.name and ch.name.startswith('__empty_')):
            continue
        if ch.name is None:
            walk(ch, path, out, struct)   # anonymous: same access path
            continue
        p = (path + '.' if path else '') + ch.name
        out.append((p, ch))
        if ch.kind not in ('scalar', 'ref'):
            elem = p + ''.join('[0]' for _ in ch.dims)
            walk(ch, elem, out, struct)

def main():
    tmp = tempfile.mkdtemp()
    hdr = '#include <stddef.h>\n#include <stdio.h>\n#include "%s"\n' % COMPAT
    syshdr = ('#include <errno.h>\n#include <fcntl.h>\n#include <sys/eventfd.h>\n#include <sys/mman.h>\n#include <signal.h>\n'
              '#include <sys/ioctl.h>\n#include <linux/if_tun.h>\n')
    # 1. debug info
    src = hdr + ''.join('struct %s v_%s;\n' % (s, s) for s in STRUCTS) + 'int main(void){return 0;}\n'
    open(os.path.join(tmp, 'dbg.c'), 'w').write(src)
    run(['gcc', '-g', '-c', '-o', os.path.join(tmp, 'dbg.o'), os.path.join(tmp, 'dbg.c')])
    trees = {}
    for s in STRUCTS:
        out = run(['gdb', '-batch', '-ex', 'ptype /o struct ' + s, os.path.join(tmp, 'dbg.o')])
        trees[s] = parse(out)
    # 2. numbers from the compiler
    probes = []
    for s, t in trees.items():
        probes.append(('size', s, '', 'sizeof(struct %s)' % s))
        members = []
        walk(t, '', members, s)
        for p, n in members:
            probes.append(('off', s, p, 'offsetof(struct %s, %s)' % (s, p)))
            if n.dims and n.dims[0] == 0:
                probes.append(('msize', s, p, '0'))   # flexible array
            else:
                probes.append(('msize', s, p, 'sizeof(((struct %s*)0)->%s)' % (s, p)))
    prog = hdr + 'int main(void){\n' + ''.join(
        '  printf("%%s %%s %%s %%llu\\n", "%s", "%s", "%s", (unsigned long long)(%s));\n' % (k, s, p or '-', e)
        for k, s, p, e in probes) + '  return 0;\n}\n'
    out, err = compile_and_run(prog, tmp, 'probe')
    if out is None:
        raise SystemExit(err)
    nums = {}
    for line in out.splitlines():
        k, s, p, v = line.split(' ')
        nums[(k, s, '' if p == '-' else p)] = int(v)

    # 3. constants and ioctls from the headers
    defs = []
    for h in ['/usr/include/linux/kvm.h', '/usr/include/x86_64-linux-gnu/asm/kvm.h', COMPAT]:
        if not os.path.exists(h):
            continue
        for m in re.finditer(r'^#define\s+(KVM_\w+)\s+(.+?)\s*(?:/\*.*)?$', re.sub(r'\\\n', ' ', open(h).read()), re.M):
            name, val = m.group(1), m.group(2)
            if '(' in name:
                continue
            defs.append((name, val))
    seen = set()
    cands = []
    for name, val in defs:
        if name in seen:
            continue
        seen.add(name)
        cands.append((name, bool(re.search(r'\b_IO(W|R|WR)?\s*\(', val))))
    while True:
        prog = hdr + 'int main(void){\n' + ''.join(
            '  printf("%s %%llu\\n", (unsigned long long)(%s));\n' % (n, n) for n, _ in cands) + '  return 0;\n}\n'
        out, err = compile_and_run(prog, tmp, 'consts')
        if out is not None:
            break
        bad = set(int(x) for x in re.findall(r'consts\.c:(\d+):', err))
        if not bad:
            raise SystemExit(err)
        cands = [c for i, c in enumerate(cands) if (i + 5) not in bad]  # 3 header lines + main
    values = {}
    for line in out.splitlines():
        n, v = line.split(' ')
        values[n] = int(v)
    sysprog = syshdr + '#include <stdio.h>\nint main(void){\n' + ''.join(
        '  printf("%s %%llu\\n", (unsigned long long)(%s));\n' % (n, n) for n in SYS) + '  return 0;\n}\n'
    out2, err = compile_and_run(sysprog, tmp, 'sys')
    if out2 is None:
        raise SystemExit(err)
    sysvals = [(l.split(' ')[0], int(l.split(' ')[1])) for l in out2.splitlines()]
    ioctls = [(n, values[n]) for n, io in cands if io and n in values]
    consts = [(n, values[n]) for n, io in cands if not io and n in values]

    # 4. native table
    inc = ['/* Generated by scripts/gen-abi.py from <linux/kvm.h>; do not edit. */']
    for n, _ in ioctls:
        inc.append('IOCTL(%s)' % n)
    for n, _ in consts:
        inc.append('CONST(%s)' % n)
    for n, _ in sysvals:
        inc.append('CONST(%s)' % n)
    for s in STRUCTS:
        inc.append('SIZE(%s)' % s)
        members = []
        walk(trees[s], '', members, s)
        for p, _ in members:
            inc.append('OFF(%s, %s)' % (s, p))
    open(os.path.join(ROOT, 'native/src/abi_gen.inc'), 'w').write('\n'.join(inc) + '\n')

    # 5. TypeScript layouts
    ts = ['/* Generated by scripts/gen-abi.py from <linux/kvm.h> (x86_64); do not edit.',
          ' * Every number here is checked against the native addon\'s table by spec/abi.spec.ts. */',
          '/* eslint-disable */',
          "import type { StructDef } from './codec';", '']
    ifaces = []

    def emit_def(node, s, path, indent):
        """TS object literal for an aggregate; offsets relative to the aggregate."""
        base = nums[('off', s, path)] if path else 0
        fields = []
        def collect(nd, pth):
            for ch in nd.children:
                if ch.bitfield or (ch.name and ch.name.startswith('__empty_')):
                    continue
                if ch.name is None:
                    collect(ch, pth)
                    continue
                p = (pth + '.' if pth else '') + ch.name
                fields.append((p, ch))
        elem_path = path + ''.join('[0]' for _ in node.dims) if path else ''
        collect(node, elem_path)
        if not path:
            sz = nums[('size', s, '')]
        else:
            total = 1
            for d in node.dims:
                total *= d
            sz = nums[('msize', s, path)] // total
        pad = '  ' * indent
        lines = ['{ kind: %r, size: %d, fields: {' % (node.kind, sz)]
        for p, ch in fields:
            off = nums[('off', s, p)] - (nums[('off', s, path)] if path else 0)
            msize = nums[('msize', s, p)]
            skip = bool(SKIP.match(ch.name))
            if ch.kind == 'scalar':
                typ = repr(ch.scalar)
            elif ch.kind == 'ref':
                typ = repr('struct ' + ch.cname)
            else:
                typ = emit_def(ch, s, p, indent + 1)
            extra = ''
            if ch.dims:
                extra += ', count: %d' % ch.dims[0]
                if len(ch.dims) > 1:
                    extra += ', dims: %r' % ch.dims
            if skip:
                extra += ', hidden: true'
            lines.append('%s  %s: { c: %r, offset: %d, size: %d, type: %s%s },' % (
                pad, camel(ch.name) if not ch.name.startswith('_') else ch.name, ch.name, off, msize, typ, extra))
        lines.append(pad + '} }')
        return '\n'.join(lines)

    def ts_type(node, indent):
        pad = '  ' * indent
        fields = []
        def collect(nd):
            for ch in nd.children:
                if ch.bitfield or (ch.name and ch.name.startswith('__empty_')):
                    continue
                if ch.name is None:
                    collect(ch)
                    continue
                fields.append(ch)
        collect(node)
        out = ['{']
        for ch in fields:
            if SKIP.match(ch.name):
                continue
            if ch.kind == 'scalar':
                base = 'bigint' if ch.scalar in ('u64', 'i64') else 'number'
                if ch.dims:
                    t = 'Uint8Array' if ch.scalar in ('u8',) else base + '[]'
                    if len(ch.dims) > 1:
                        t = 'Uint8Array' if ch.scalar == 'u8' else base + '[]'
                else:
                    t = base
            elif ch.kind == 'ref':
                t = pascal(ch.cname)
                if ch.dims:
                    t = 'Array<' + t + '>'
            else:
                t = ts_type(ch, indent + 1)
                if ch.dims:
                    t = 'Array<' + t + '>'
            out.append('%s  %s: %s;' % (pad, camel(ch.name), t))
        out.append(pad + '}')
        return '\n'.join(out)

    for s in STRUCTS:
        ts.append('/** Layout of `struct %s` (%d bytes). */' % (s, nums[('size', s, '')]))
        ts.append('export const %s: StructDef = %s;' % (s, emit_def(trees[s], s, '', 0)))
        ts.append('')
        if s != 'kvm_run':
            ts.append('/** `struct %s`, with camelCase field names. */' % s)
            ts.append('export interface %s %s' % (pascal(s), ts_type(trees[s], 0)))
            ts.append('')
    ts.append('/** The C name of a generated layout. */')
    ts.append('export type StructDefName = %s;' % ' | '.join(repr(x) for x in STRUCTS))
    ts.append('')
    ts.append('/** Every generated layout, by C name. */')
    ts.append('export const layouts: Record<string, StructDef> = { %s };' % ', '.join(STRUCTS))
    open(os.path.join(ROOT, 'src/abi/layouts.ts'), 'w').write('\n'.join(ts) + '\n')

    cs = ['/* Generated by scripts/gen-abi.py from <linux/kvm.h> (x86_64); do not edit.',
          ' * Checked against the native addon\'s table by spec/abi.spec.ts. */', '/* eslint-disable */', '']
    cs.append('/** ioctl request numbers (x86_64). */')
    cs.append('export const ioctls = {')
    for n, v in ioctls:
        cs.append('  %s: 0x%x,' % (n, v))
    cs.append('} as const;')
    cs.append('')
    cs.append('/** `KVM_*` constants (x86_64). Values above 2^53 are bigint. */')
    cs.append('export const kvm = {')
    for n, v in consts:
        cs.append('  %s: %s,' % (n, ('0x%xn' % v) if v > (1 << 53) - 1 else str(v)))
    cs.append('} as const;')
    cs.append('')
    cs.append('/** libc constants the wrappers pass to the backend (Linux). */')
    cs.append('export const sys = {')
    for n, v in sysvals:
        cs.append('  %s: %d,' % (n, v))
    cs.append('} as const;')
    open(os.path.join(ROOT, 'src/abi/kvm-constants.ts'), 'w').write('\n'.join(cs) + '\n')
    print('structs', len(STRUCTS), 'ioctls', len(ioctls), 'constants', len(consts))

main()
