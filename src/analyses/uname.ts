/**
 * uname: the guest's identity from its uts namespace (struct new_utsname), as `uname -a` shows
 * it inside the guest. The namespace is init's (pid 1's nsproxy), falling back to init_uts_ns.
 */
import type { Kernel } from '../kernel/kernel.ts';
import type { KObject } from '../kernel/object.ts';
import type { UtsName } from '../kernel/locate/index.ts';

/** struct new_utsname, as `uname -a` shows it. */
export type UnameRow = UtsName;

export function utsNamespaceOf(task: KObject): KObject {
  return task.member('nsproxy').member('uts_ns');
}

export function uname(k: Kernel, ns?: KObject): UnameRow {
  const uts = ns ?? k.variable('init_uts_ns', 'struct uts_namespace');
  const name = uts.member('name');
  return {
    sysname: name.member('sysname').str(),
    nodename: name.member('nodename').str(),
    release: name.member('release').str(),
    version: name.member('version').str(),
    machine: name.member('machine').str(),
    domainname: name.member('domainname').str(),
  };
}
