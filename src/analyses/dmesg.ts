/**
 * The kernel log from the lockless printk ring buffer (kernel/printk/printk_ringbuffer.c,
 * 5.10+): descriptors and infos in one ring, text blocks in another. Only records whose
 * descriptor is committed or finalized and still carries the id we expect are read — a record
 * being overwritten while we read it is skipped, never shown torn.
 */
import type { Kernel } from '../kernel/kernel.ts';
import type { KObject } from '../kernel/object.ts';
import { GuestDataError } from '../util/errors.ts';

export interface LogRecord {
  readonly seq: number;
  /** Nanoseconds since boot (local clock), as dmesg's timestamps. */
  readonly timestampNs: number;
  /** Syslog level 0 (emerg) … 7 (debug). */
  readonly level: number;
  readonly facility: number;
  /** 'T<pid>' or 'C<cpu>' of the context that logged it (printk caller id). */
  readonly caller: string;
  readonly text: string;
}

const DESC_SV_BITS = 64n;
const DESC_FLAGS_SHIFT = DESC_SV_BITS - 2n;
const DESC_ID_MASK = (1n << DESC_FLAGS_SHIFT) - 1n;
const DESC_COMMITTED = 1n;
const DESC_FINALIZED = 2n;
/** Bigger rings than this are not plausible (the kernel caps log_buf_len at 2^25 or so). */
const MAX_COUNT_BITS = 24;
const MAX_SIZE_BITS = 31;
const latin1 = new TextDecoder('latin1');

/** Where the ring lives and how it is laid out, read once per call. */
interface Ring {
  readonly k: Kernel;
  readonly count: number;
  readonly dataSize: number;
  readonly sizeBits: number;
  readonly data: bigint;
  readonly descsBase: bigint;
  readonly infosBase: bigint;
  readonly descSize: number;
  readonly infoSize: number;
  readonly infoType: number;
  readonly head: bigint;
  readonly tail: bigint;
  readonly offState: number;
  readonly offBegin: number;
  readonly offNext: number;
}

function openRing(k: Kernel): Ring {
  const prb = k.variable('prb', 'struct printk_ringbuffer *').deref();
  const descRing = prb.member('desc_ring');
  const dataRing = prb.member('text_data_ring');
  const countBits = descRing.member('count_bits').num();
  const sizeBits = dataRing.member('size_bits').num();
  if (countBits < 1 || countBits > MAX_COUNT_BITS) throw new GuestDataError(`printk ring: count_bits ${countBits} is implausible`);
  if (sizeBits < 1 || sizeBits > MAX_SIZE_BITS) throw new GuestDataError(`printk ring: size_bits ${sizeBits} is implausible`);
  const descs = descRing.member('descs').deref();
  const infos = descRing.member('infos').deref();
  const offLpos = k.offsetOf('prb_desc', 'text_blk_lpos');
  return {
    k,
    count: 1 << countBits,
    dataSize: 2 ** sizeBits,
    sizeBits,
    data: dataRing.member('data').ptr(),
    descsBase: descs.address,
    infosBase: infos.address,
    descSize: descs.sizeof,
    infoSize: infos.sizeof,
    infoType: infos.typeId,
    head: descRing.member('head_id').member('counter').big() & DESC_ID_MASK,
    tail: descRing.member('tail_id').member('counter').big() & DESC_ID_MASK,
    offState: k.offsetOf('prb_desc', 'state_var'),
    offBegin: offLpos + k.offsetOf('prb_data_blk_lpos', 'begin'),
    offNext: offLpos + k.offsetOf('prb_data_blk_lpos', 'next'),
  };
}

/**
 * The record with descriptor `id`, if its descriptor is committed or finalized and still
 * carries that id; undefined for one being written or already reused (a warning if unreadable).
 */
function readRecord(ring: Ring, id: bigint): LogRecord | undefined {
  const { k } = ring;
  const space = k.space;
  const idx = Number(id % BigInt(ring.count));
  const desc = ring.descsBase + BigInt(idx * ring.descSize);
  try {
    const sv = space.readU64Big(desc + BigInt(ring.offState));
    const state = sv >> DESC_FLAGS_SHIFT;
    if ((sv & DESC_ID_MASK) !== id || (state !== DESC_COMMITTED && state !== DESC_FINALIZED)) return undefined;
    const info = k.object(ring.infoType, ring.infosBase + BigInt(idx * ring.infoSize));
    const begin = space.readU64Big(desc + BigInt(ring.offBegin));
    const next = space.readU64Big(desc + BigInt(ring.offNext));
    const textLen = info.member('text_len').num();
    return {
      seq: info.member('seq').num(),
      timestampNs: info.member('ts_nsec').num(),
      level: info.member('level').num(),
      facility: info.member('facility').num(),
      caller: callerName(info),
      text: readText(k, ring.data, ring.dataSize, ring.sizeBits, begin, next, textLen),
    };
  } catch (e) {
    k.warnings.warn('printk ring', `record ${id}: ${(e as Error).message}`);
    return undefined;
  }
}

/** Every record the ring holds, oldest first. */
export function readLog(k: Kernel): LogRecord[] {
  const ring = openRing(k);
  const records: LogRecord[] = [];
  let id = ring.tail;
  for (let n = 0; n <= ring.count; n++) {
    const r = readRecord(ring, id);
    if (r) records.push(r);
    if (id === ring.head) break;
    id = (id + 1n) & DESC_ID_MASK;
  }
  records.sort((a, b) => a.seq - b.seq);
  return records;
}

export interface NewRecords {
  /** Records after the given sequence number, oldest first. */
  readonly records: LogRecord[];
  /** Records after it that the ring no longer holds (overwritten before this read). */
  readonly lost: number;
}

/**
 * The records after sequence number `afterSeq`, oldest first: walked back from the newest until
 * one at or before `afterSeq`, so a poll costs what is new rather than the whole ring.
 */
export function readLogAfter(k: Kernel, afterSeq: number): NewRecords {
  const ring = openRing(k);
  const records: LogRecord[] = [];
  let id = ring.head;
  let reachedOld = false;
  for (let n = 0; n <= ring.count; n++) {
    const r = readRecord(ring, id);
    if (r) {
      if (r.seq <= afterSeq) {
        reachedOld = true;
        break;
      }
      records.push(r);
    }
    if (id === ring.tail) break;
    id = (id - 1n) & DESC_ID_MASK;
  }
  records.sort((a, b) => a.seq - b.seq);
  const oldest = records[0]?.seq;
  const lost = !reachedOld && oldest !== undefined ? Math.max(0, oldest - afterSeq - 1) : 0;
  return { records, lost };
}

function callerName(info: KObject): string {
  if (!info.hasMember('caller_id')) return '';
  const id = info.member('caller_id').num();
  return id & 0x8000_0000 ? `C${id & 0x7fff_ffff}` : `T${id}`;
}

/** Text of a data block: [begin, next) in logical positions; a wrapped block starts at 0. */
function readText(k: Kernel, data: bigint, dataSize: number, sizeBits: number, begin: bigint, next: bigint, textLen: number): string {
  // Data-less records use lpos values with bit 0 set (FAILED_LPOS, EMPTY_LINE_LPOS).
  if ((begin & 1n) === 1n || begin === next) return '';
  const size = BigInt(dataSize);
  const wrapsBegin = begin >> BigInt(sizeBits);
  const wrapsNext = next >> BigInt(sizeBits);
  let start: bigint;
  let len: bigint;
  if (wrapsBegin === wrapsNext) {
    start = begin % size;
    len = next - begin;
  } else {
    start = 0n;
    len = next % size;
  }
  // Each block begins with its descriptor id (an unsigned long).
  len -= 8n;
  if (len <= 0n || len > size) return '';
  const n = Math.min(Number(len), textLen);
  const bytes = k.space.readBytes(data + start + 8n, n);
  return latin1.decode(bytes);
}

/**
 * `[    1.234567] text` as the kernel formats a record for syslog and dmesg: a record whose
 * text holds several lines gets the prefix on each (record_print_text).
 */
export function formatRecord(r: LogRecord): string {
  const us = Math.floor(r.timestampNs / 1000);
  const sec = Math.floor(us / 1e6);
  const frac = String(us % 1e6).padStart(6, '0');
  const prefix = `[${String(sec).padStart(5, ' ')}.${frac}] `;
  const text = r.text.endsWith('\n') ? r.text.slice(0, -1) : r.text;
  return text
    .split('\n')
    .map((line) => prefix + line)
    .join('\n');
}
