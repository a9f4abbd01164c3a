/** Classic 16-bytes-per-line hex dump with an ASCII column, addresses from `base`. */
export function hexdump(bytes: Uint8Array, base: bigint): string {
  const lines: string[] = [];
  const width = base + BigInt(bytes.length) > 0xffff_ffffn ? 16 : 8;
  for (let off = 0; off < bytes.length; off += 16) {
    const chunk = bytes.subarray(off, Math.min(off + 16, bytes.length));
    let hex = '';
    let ascii = '';
    for (let i = 0; i < 16; i++) {
      if (i === 8) hex += ' ';
      if (i < chunk.length) {
        const b = chunk[i]!;
        hex += `${b.toString(16).padStart(2, '0')} `;
        ascii += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.';
      } else hex += '   ';
    }
    lines.push(`${(base + BigInt(off)).toString(16).padStart(width, '0')}  ${hex} |${ascii}|`);
  }
  return lines.join('\n');
}
