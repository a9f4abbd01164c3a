/**
 * Address spaces of a Machine: the root and paging mode come from a vCPU's control registers,
 * and one PhysReader is shared by every space over the same physical memory.
 */
import { cr3Root, type Machine, type VcpuState } from '../machine/types.ts';
import type { PhysicalMemory } from '../source/types.ts';
import { UsageError } from '../util/errors.ts';
import { AddressSpace, type AddressSpaceOptions } from './address-space.ts';
import { pagingLevels } from './paging.ts';
import { PhysReader } from './phys-reader.ts';

const readers = new WeakMap<PhysicalMemory, PhysReader>();

/**
 * The PhysReader of a machine's memory, created once. A dump is frozen for good; a live guest
 * starts as running (every cached translation is validated), which is correct whether or not
 * it is paused. Whoever pauses it may call `setFrozen(true)`, and must call `setFrozen(false)`
 * before resuming it.
 */
export function readerFor(machine: Pick<Machine, 'memory' | 'live'>): PhysReader {
  let r = readers.get(machine.memory);
  if (!r) {
    r = new PhysReader(machine.memory, { frozen: !machine.live });
    readers.set(machine.memory, r);
  }
  return r;
}

export interface SpaceSelection extends Omit<AddressSpaceOptions, 'frozen'> {
  /** Page-table root as a CR3 value (PCID and flag bits are ignored). Default: the vCPU's CR3. */
  cr3?: bigint;
  /** vCPU whose registers give the paging mode (and CR3 unless given). Default 0. */
  cpu?: number;
  /** Paging levels, for targets without vCPU state (a raw dump). Default: from the vCPU. */
  levels?: 4 | 5;
}

export async function addressSpaceFor(machine: Machine, selection: SpaceSelection = {}): Promise<AddressSpace> {
  const { cr3, cpu = 0, levels, ...options } = selection;
  if (cr3 !== undefined && (cr3 < 0n || cr3 >= 1n << 64n)) throw new UsageError(`CR3 value 0x${cr3.toString(16)} is not 64-bit`);
  const reader = readerFor(machine);
  let vcpu: VcpuState | undefined;
  if (cr3 === undefined || levels === undefined) {
    const vcpus = await machine.vcpus();
    vcpu = vcpus.find((v) => v.index === cpu);
    if (!vcpu) {
      throw new UsageError(
        vcpus.length === 0
          ? `${machine.name} has no vCPU state: give both a CR3 value and the paging levels`
          : `no vCPU ${cpu} (the guest has ${vcpus.length})`,
      );
    }
  }
  return new AddressSpace(reader, cr3Root(cr3 ?? vcpu!.cr3), levels ?? pagingLevels(vcpu!), options);
}
