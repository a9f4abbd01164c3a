/**
 * Output for data commands. Analyses return rows of typed values; this module turns them into
 * aligned text columns (the shape administrators know from ps/lsmod) or JSON. No analysis prints.
 */
export type Cell = string | number | bigint | boolean | null | undefined;

export interface Column<Row> {
  /** Header shown in text mode. */
  readonly header: string;
  /** Value for a row; bigint addresses are rendered as 0x… hex in text, strings in JSON. */
  readonly value: (row: Row) => Cell;
  readonly align?: 'left' | 'right';
  /** Render bigint/number values as hex in text mode. */
  readonly hex?: boolean;
}

export function formatCell(v: Cell, hex = false): string {
  if (v === null || v === undefined) return '-';
  if (typeof v === 'bigint') return hex ? `0x${v.toString(16)}` : v.toString();
  if (typeof v === 'number') return hex ? `0x${v.toString(16)}` : String(v);
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  return v;
}

/** Aligned columns, two spaces apart; the last column is never padded. */
export function renderTable<Row>(columns: readonly Column<Row>[], rows: Iterable<Row>): string {
  const cells: string[][] = [columns.map((c) => c.header)];
  for (const row of rows) cells.push(columns.map((c) => formatCell(c.value(row), c.hex)));
  const widths = columns.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells
    .map((r) =>
      r
        .map((cell, i) => {
          if (i === r.length - 1 && columns[i]!.align !== 'right') return cell;
          return columns[i]!.align === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** JSON with bigint as hex strings (addresses) — JSON has no 64-bit integers. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2);
}

/** Key/value block for single-object outputs (info, uname). */
export function renderFields(fields: readonly [string, Cell][]): string {
  const w = Math.max(...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${k.padEnd(w)}  ${formatCell(v)}`).join('\n');
}
