/**
 * Guest-physical memory through QEMU's gdbstub: the legacy path, one protocol round trip per
 * packet of at most 2 KiB, no windows. It puts the stub in physical mode (`Qqemu.PhyMemMode:1`)
 * and checks every access against the RAM map the caller gives, because QEMU answers physical
 * reads of holes and MMIO without an error (zeros, or device registers).
 *
 * Connecting to QEMU's gdbstub stops the guest, and any request sent while it runs stops it
 * again; this source therefore sees a paused guest. close() puts back what it changed: the
 * memory mode (which belongs to the QEMU process), and the run state when connecting was what
 * stopped the guest.
 */
import { PhysicalAccessError, ReadOnlyError, TargetError, UsageError } from '../../util/errors.ts';
import { normalizeRanges, rangeIndexFor } from '../ranges.ts';
import type { PhysicalMemory, PhysRange } from '../types.ts';
import { type BatchRequest, BlockingGdbClient } from './blocking-client.ts';
import { errorCode, hexInto } from './protocol.ts';

export interface GdbSourceOptions {
  /** The guest-physical RAM map (from QMP `info mtree -f` or the machine's size); everything else is a hole. */
  readonly ranges: readonly PhysRange[];
  /** Time allowed for connecting and for each request. Default 5000 ms. */
  readonly timeoutMs?: number;
  /** Allow write(). Default false. */
  readonly writable?: boolean;
  /** On close, resume the guest if connecting stopped it (QEMU 7.2 tells). Default true. */
  readonly resumeOnClose?: boolean;
  /**
   * Requests in flight at once for multi-packet reads and readMany (1 = strictly one round trip
   * per packet). Default 16.
   */
  readonly pipelineDepth?: number;
}

const DEFAULT_PIPELINE_DEPTH = 16;

export class GdbPhysicalMemory implements PhysicalMemory {
  readonly kind = 'gdb';
  readonly description: string;
  readonly ranges: readonly PhysRange[];
  readonly writable: boolean;
  private readonly resumeOnClose: boolean;
  private readonly depth: number;
  private readonly maxRead: number;
  private readonly maxWrite: number;
  private readonly restorePhysicalMode: boolean;

  private constructor(
    private readonly client: BlockingGdbClient,
    opts: GdbSourceOptions,
    ranges: PhysRange[],
    wasPhysical: boolean,
  ) {
    this.ranges = ranges;
    this.writable = opts.writable ?? false;
    this.resumeOnClose = opts.resumeOnClose ?? true;
    this.depth = opts.pipelineDepth ?? DEFAULT_PIPELINE_DEPTH;
    this.maxRead = client.maxReadBytes;
    this.maxWrite = client.maxWriteBytes;
    this.restorePhysicalMode = !wasPhysical;
    this.description = `gdbstub ${client.address} (physical mode, ${this.maxRead}-byte reads)`;
  }

  /**
   * Connect to a gdbstub (IP literal or 'localhost') and switch it to physical addresses.
   * Throws TargetError when nothing listens there or the stub is not QEMU's system stub.
   */
  static open(host: string, port: number, opts: GdbSourceOptions): GdbPhysicalMemory {
    const ranges = normalizeRanges(opts.ranges);
    if (ranges.length === 0) throw new UsageError('gdb source: the guest RAM map is empty');
    if (opts.pipelineDepth !== undefined && (!Number.isInteger(opts.pipelineDepth) || opts.pipelineDepth < 1)) {
      throw new UsageError(`gdb source: bad pipeline depth ${opts.pipelineDepth}`);
    }
    const client = BlockingGdbClient.connect(host, port, opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {});
    try {
      const wasPhysical = client.physicalMode();
      if (!wasPhysical) client.setPhysicalMode(true);
      return new GdbPhysicalMemory(client, opts, ranges, wasPhysical);
    } catch (e) {
      client.close();
      throw e;
    }
  }

  /** Packets sent so far (each is one request/reply). */
  get requests(): number {
    return this.client.requests;
  }

  /** True when connecting stopped a running guest. */
  get stoppedOnConnect(): boolean {
    return this.client.stoppedOnConnect;
  }

  read(gpa: number, dst: Uint8Array): void {
    if (dst.length === 0) return;
    rangeIndexFor(this.ranges, gpa, dst.length);
    if (dst.length <= this.maxRead) {
      this.decodeInto(gpa, dst, 0, dst.length, this.client.request(readPacket(gpa, dst.length), readLabel(gpa, dst.length)));
      return;
    }
    const batch: BatchRequest[] = [];
    this.addReads(batch, gpa, dst);
    this.client.batch(batch, this.depth);
  }

  /**
   * Several reads, pipelined: every range is checked first, so a hole throws before any
   * request is sent.
   */
  readMany(requests: readonly { gpa: number; dst: Uint8Array }[]): void {
    for (const r of requests) if (r.dst.length) rangeIndexFor(this.ranges, r.gpa, r.dst.length);
    const batch: BatchRequest[] = [];
    for (const r of requests) if (r.dst.length) this.addReads(batch, r.gpa, r.dst);
    this.client.batch(batch, this.depth);
  }

  private addReads(batch: BatchRequest[], gpa: number, dst: Uint8Array): void {
    for (let off = 0; off < dst.length; off += this.maxRead) {
      const n = Math.min(this.maxRead, dst.length - off);
      const at = gpa + off;
      batch.push({ payload: readPacket(at, n), what: readLabel(at, n), onReply: (r) => this.decodeInto(at, dst, off, n, r) });
    }
  }

  private decodeInto(gpa: number, dst: Uint8Array, off: number, n: number, reply: Buffer): void {
    if (reply.length === n * 2 && hexInto(reply, 0, dst, off, n)) return;
    const code = errorCode(reply);
    if (code !== undefined) throw new PhysicalAccessError(gpa, n, `could not be read through the gdbstub (error 0x${code.toString(16)})`);
    throw new TargetError(`gdbstub sent a malformed reply to ${readLabel(gpa, n)} (${reply.length} bytes)`);
  }

  write(gpa: number, src: Uint8Array): void {
    if (!this.writable) throw new ReadOnlyError('the gdb source was opened read-only');
    if (src.length === 0) return;
    rangeIndexFor(this.ranges, gpa, src.length);
    const batch: BatchRequest[] = [];
    for (let off = 0; off < src.length; off += this.maxWrite) {
      const n = Math.min(this.maxWrite, src.length - off);
      const at = gpa + off;
      const data = Buffer.from(src.buffer, src.byteOffset + off, n).toString('hex');
      batch.push({
        payload: `M${at.toString(16)},${n.toString(16)}:${data}`,
        what: `M 0x${at.toString(16)},${n}`,
        onReply: (r) => {
          if (r.length === 2 && r[0] === 0x4f && r[1] === 0x4b) return; // OK
          const code = errorCode(r);
          if (code !== undefined) throw new PhysicalAccessError(at, n, `could not be written through the gdbstub (error 0x${code.toString(16)})`);
          throw new TargetError(`gdbstub refused a write at 0x${at.toString(16)}: ${JSON.stringify(r.toString('latin1').slice(0, 40))}`);
        },
      });
    }
    this.client.batch(batch, this.depth);
  }

  /**
   * Restore the memory mode, resume the guest if connecting stopped it, and disconnect. Best
   * effort: a stub that is already gone is not an error here.
   */
  close(): void {
    if (this.client.closed) return;
    try {
      if (this.restorePhysicalMode) this.client.setPhysicalMode(false);
      if (this.resumeOnClose && this.client.stoppedOnConnect) this.client.detach();
    } catch {
      // The connection died; there is nothing left to restore through it.
    } finally {
      this.client.close();
    }
  }
}

function readPacket(gpa: number, n: number): string {
  return `m${gpa.toString(16)},${n.toString(16)}`;
}

function readLabel(gpa: number, n: number): string {
  return `m 0x${gpa.toString(16)},${n}`;
}
