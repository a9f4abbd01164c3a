import { describe, expect, it } from 'vitest';
import { parseInfoRegisters } from '../../src/machine/hmp-registers.ts';
import { vcpuFromHmp } from '../../src/machine/vcpu-state.ts';
import { pagingMode } from '../../src/machine/types.ts';

// The 64-bit form of QEMU's x86_cpu_dump_state (target/i386/cpu-dump.c), then a 16-bit one.
const TEXT = `CPU#0
RAX=0000000000000000 RBX=ffffffff82a0c940 RCX=0000000000000001 RDX=000000000000b1b6
RSI=0000000000000083 RDI=000000000000b1b7 RBP=0000000000000000 RSP=ffffffff82a03e80
R8 =ffff88803ec2c8e0 R9 =0000000000000000 R10=0000000000000001 R11=0000000000000000
R12=0000000000000000 R13=0000000000000000 R14=0000000000000000 R15=0000000000000000
RIP=ffffffff81e0c3ab RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
ES =0000 0000000000000000 00000000 00000000
CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]
SS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
DS =0000 0000000000000000 00000000 00000000
FS =0000 0000000000000000 00000000 00000000
GS =0000 ffff88803ec00000 00000000 00000000
LDT=0000 0000000000000000 00000000 00008200 DPL=0 LDT
TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl
GDT=     fffffe0000001000 0000007f
IDT=     fffffe0000000000 00000fff
CR0=80050033 CR2=000055d0d3a4e6b8 CR3=000000000260c000 CR4=00371ef0
DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000 
DR6=00000000ffff0ff0 DR7=0000000000000400
EFER=0000000000000d01
FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001f80
FPR0=0000000000000000 0000 FPR1=0000000000000000 0000
XMM00=0000000000000000 0000000000000000 XMM01=0000000000000000 0000000000000000

CPU#1
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
ESI=00000000 EDI=00000000 EBP=00000000 ESP=00000000
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
ES =0000 00000000 0000ffff 00009300
CS =f000 ffff0000 0000ffff 00009b00
GS =0000 00000000 0000ffff 00009300
GDT=     00000000 0000ffff
IDT=     00000000 0000ffff
CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000
EFER=0000000000000000
`;

describe('info registers -a', () => {
  const cpus = parseInfoRegisters(TEXT);
  it('reads one record per vCPU', () => {
    expect(cpus.map((c) => [c.index, c.wide])).toEqual([
      [0, true],
      [1, false],
    ]);
  });
  it('reads the 64-bit form', () => {
    const c = cpus[0]!;
    expect(c.regs.r8).toBe(0xffff88803ec2c8e0n);
    expect(c.regs.rip).toBe(0xffffffff81e0c3abn);
    expect(c.regs.rflags).toBe(0x246n);
    expect(c.segments.gs!.base).toBe(0xffff88803ec00000n);
    expect(c.segments.cs).toEqual({ selector: 0x10, base: 0n, limit: 0xffffffff, flags: 0xa09b00 });
    expect(c.gdt).toEqual({ base: 0xfffffe0000001000n, limit: 0x7f });
    expect(c.cr3).toBe(0x260c000n);
    expect(c.efer).toBe(0xd01n);
    expect(c.halted).toBe(true);
    const v = vcpuFromHmp(c);
    expect(pagingMode(v)).toBe('5-level'); // CR4.LA57 (bit 12) is set
    expect(v).toMatchObject({ rsp: 0xffffffff82a03e80n, gsBase: 0xffff88803ec00000n, idtBase: 0xfffffe0000000000n, cpl: 0 });
  });
  it('reads the 32-bit form into the same names', () => {
    const c = cpus[1]!;
    expect(c.regs.rip).toBe(0xfff0n);
    expect(c.regs.rdx).toBe(0x60fb1n);
    expect(c.segments.cs!.base).toBe(0xffff0000n);
    expect(c.cr0).toBe(0x60000010n);
    expect(pagingMode(vcpuFromHmp(c))).toBe('none');
  });
  it('reads a single block without a CPU# heading', () => {
    const one = parseInfoRegisters(TEXT.split('\n\n')[1]!.split('\n').slice(1).join('\n'));
    expect(one).toHaveLength(1);
    expect(one[0]!.index).toBe(0);
  });
});
