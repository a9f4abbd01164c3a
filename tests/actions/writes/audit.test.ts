/**
 * The audit log as a file format: appended lines, merged by id, torn lines survived, the path
 * taken from the environment.
 */
import { appendFileSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  appendAudit,
  AUDIT_LOG_ENV,
  auditLogPath,
  fromHex,
  readAudit,
  readAuditHistory,
  sameTarget,
  toHex,
  type AuditTarget,
} from '../../../src/actions/audit.ts';
import { UsageError } from '../../../src/util/errors.ts';
import { tempAuditLog } from './support.ts';

const target: AuditTarget = { guest: 'g', qmp: '/run/g.sock', kernelText: '0xffffffff81000000' };

describe('audit log', () => {
  let log: { path: string; cleanup: () => void };
  beforeEach(() => {
    log = tempAuditLog();
  });
  afterEach(() => log.cleanup());

  it('appends one JSON line per entry, in a 0600 file, filling in id and time', () => {
    const a = appendAudit({ kind: 'write', command: 'sysctl a=1', target, result: 'ok', writes: [{ va: '0x1', pa: '0x2', old: '00', new: '01' }] }, log.path);
    const b = appendAudit({ kind: 'call', command: 'kill 1', target, result: 'ok', details: { function: 'kill_pid', args: [1, 9] } }, log.path);
    const lines = readFileSync(log.path, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(JSON.parse(lines[0]!)).toEqual(a);
    expect(JSON.parse(lines[1]!)).toEqual(b);
    expect(a.id).not.toBe(b.id);
    expect(Number.isNaN(Date.parse(a.time))).toBe(false);
    expect(b.writes).toEqual([]);
    expect(statSync(log.path).mode & 0o777).toBe(0o600);
  });

  it('merges lines of one id into its final state, in the order changes began', () => {
    const s1 = appendAudit({ kind: 'write', command: 'first', target, result: 'started' }, log.path);
    const s2 = appendAudit({ kind: 'write', command: 'second', target, result: 'started' }, log.path);
    appendAudit({ id: s2.id, kind: 'write', command: 'second', target, result: 'failed', error: 'boom' }, log.path);
    appendAudit({ id: s1.id, kind: 'write', command: 'first', target, result: 'ok' }, log.path);
    const h = readAuditHistory(log.path).entries;
    expect(h.map((e) => [e.command, e.result])).toEqual([
      ['first', 'ok'],
      ['second', 'failed'],
    ]);
    expect(readAudit(log.path).entries).toHaveLength(4);
  });

  it('skips a torn or foreign line and keeps the rest readable', () => {
    appendAudit({ kind: 'write', command: 'a', target, result: 'ok' }, log.path);
    appendFileSync(log.path, '{"id":"x","time":"t","kind":"wri\n');
    appendFileSync(log.path, '{"hello":1}\n');
    appendAudit({ kind: 'write', command: 'b', target, result: 'ok' }, log.path);
    const r = readAudit(log.path);
    expect(r.entries.map((e) => e.command)).toEqual(['a', 'b']);
    expect(r.skipped).toBe(2);
  });

  it('reads a missing log as empty', () => {
    expect(readAudit(join(log.path, 'none.jsonl'))).toEqual({ entries: [], skipped: 0 });
  });

  it('refuses an unwritable location with a one-line error naming the override', () => {
    expect(() => appendAudit({ kind: 'write', command: 'a', target, result: 'ok' }, '/proc/vmlens/audit.jsonl')).toThrow(UsageError);
    expect(() => appendAudit({ kind: 'write', command: 'a', target, result: 'ok' }, '/proc/vmlens/audit.jsonl')).toThrow(AUDIT_LOG_ENV);
  });

  it('takes its path from the override, then XDG_STATE_HOME, then ~/.local/state', () => {
    expect(auditLogPath({ [AUDIT_LOG_ENV]: '/x/a.jsonl', XDG_STATE_HOME: '/s' })).toBe('/x/a.jsonl');
    expect(auditLogPath({ XDG_STATE_HOME: '/s' })).toBe('/s/vmlens/audit.jsonl');
    expect(auditLogPath({})).toMatch(/\/\.local\/state\/vmlens\/audit\.jsonl$/);
  });

  it('identifies guests by QMP socket and boot, or by name', () => {
    expect(sameTarget(target, { guest: 'other-name', qmp: '/run/g.sock', kernelText: '0xffffffff81000000' })).toBe(true);
    expect(sameTarget(target, { guest: 'g', qmp: '/run/h.sock' })).toBe(false);
    expect(sameTarget(target, { ...target, kernelText: '0xffffffff82000000' })).toBe(false);
    expect(sameTarget({ guest: 'g' }, { guest: 'g', kernelText: '0x1' })).toBe(true);
    expect(sameTarget({ guest: 'g' }, { guest: 'h' })).toBe(false);
  });

  it('round-trips bytes through hex and rejects what is not hex', () => {
    const b = Uint8Array.of(0, 1, 0xab, 0xff);
    expect(toHex(b)).toBe('0001abff');
    expect(fromHex('0001abff')).toEqual(b);
    expect(toHex(b.subarray(1, 3))).toBe('01ab');
    expect(() => fromHex('abc')).toThrow(UsageError);
    expect(() => fromHex('zz')).toThrow(UsageError);
  });
});
