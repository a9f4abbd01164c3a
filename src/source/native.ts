/**
 * libc through koffi (FFI), loaded on first use. Only what the sources need: mmap for zero-copy
 * RAM and dumps, and process_vm_readv for batched reads of a QEMU process. Where koffi or libc
 * cannot be loaded, `loadLibc` yields null and callers fall back to plain file reads.
 */
export interface Libc {
  mmap(addr: bigint | null, length: number, prot: number, flags: number, fd: number, offset: number): bigint;
  munmap(addr: bigint, length: number): number;
  malloc(size: number): bigint;
  free(addr: bigint): void;
  /** Returns bytes read, or -1 (see errno()). Pointers are host addresses. */
  processVmReadv(pid: number, localIov: bigint, localCount: number, remoteIov: bigint, remoteCount: number): number;
  /** A zero-copy ArrayBuffer over [addr, addr+length). */
  view(addr: bigint, length: number): ArrayBuffer;
  errno(): number;
}

let libc: Libc | null | undefined;

export async function loadLibc(): Promise<Libc | null> {
  if (libc !== undefined) return libc;
  try {
    const koffi = (await import('koffi')).default;
    const lib = koffi.load('libc.so.6');
    const mmap = lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
    const munmap = lib.func('int munmap(void *addr, size_t length)');
    const malloc = lib.func('void *malloc(size_t size)');
    const free = lib.func('void free(void *ptr)');
    const pvr = lib.func('intptr_t process_vm_readv(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)');
    libc = {
      mmap: (addr, length, prot, flags, fd, offset) => koffi.address(mmap(addr, length, prot, flags, fd, offset)),
      munmap: (addr, length) => munmap(addr, length) as number,
      malloc: (size) => koffi.address(malloc(size)),
      free: (addr) => void free(addr),
      processVmReadv: (pid, l, lc, r, rc) => Number(pvr(pid, l, lc, r, rc, 0)),
      view: (addr, length) => koffi.view(addr, length),
      errno: () => koffi.errno(),
    };
  } catch {
    libc = null;
  }
  return libc;
}
