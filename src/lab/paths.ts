import { accessSync, constants, existsSync, mkdirSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where the lab keeps things. Two places with different lifetimes:
 * - the cache (kernels, initramfs images) survives reboots and is shared by every guest;
 * - the runtime directory (sockets, pid, lab.json per guest) lives as long as the host is up,
 *   like the guests themselves.
 * Both can be moved with environment variables, which the test suite uses for isolation.
 */

/** `$VMLENS_CACHE_DIR`, else `$XDG_CACHE_HOME/vmlens`, else `~/.cache/vmlens`. */
export function cacheDir(): string {
  const env = process.env;
  if (env.VMLENS_CACHE_DIR) return env.VMLENS_CACHE_DIR;
  const base = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME.startsWith('/') ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  return join(base, 'vmlens');
}

/**
 * `$VMLENS_RUNTIME_DIR`, else `/run/vmlens/lab` for root, else `$XDG_RUNTIME_DIR/vmlens/lab`,
 * else `/tmp/vmlens-<uid>/lab`. Unix socket paths are limited to 107 bytes, so this stays short.
 */
export function labRuntimeDir(): string {
  const env = process.env;
  if (env.VMLENS_RUNTIME_DIR) return env.VMLENS_RUNTIME_DIR;
  const uid = process.getuid?.() ?? -1;
  if (uid === 0 && isWritableDir('/run')) return '/run/vmlens/lab';
  if (env.XDG_RUNTIME_DIR && isWritableDir(env.XDG_RUNTIME_DIR)) return join(env.XDG_RUNTIME_DIR, 'vmlens', 'lab');
  return join(tmpdir(), `vmlens-${uid}`, 'lab');
}

/** Directory holding guest RAM files: tmpfs, so the RAM never touches a disk. */
export function ramDir(): string {
  return process.env.VMLENS_RAM_DIR ?? '/dev/shm';
}

export function ensureDir(path: string): string {
  mkdirSync(path, { recursive: true, mode: 0o755 });
  return path;
}

function isWritableDir(path: string): boolean {
  try {
    accessSync(path, constants.W_OK | constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A path inside the checkout (the guest's scripts, the rootkit's sources): found from the nearest
 * directory above this module that holds package.json, so that it is the same whether the
 * module runs from src/ or from the CLI's bundle.
 */
export function checkoutPath(relative: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 16; i++) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, relative);
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}: cannot find ${relative}`);
}
