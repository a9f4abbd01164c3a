/**
 * C declarations from BTF types: `struct list_head *`, `char comm[16]`,
 * `int (*)(struct file *, ...)`. The declarator is built inside-out, as C reads it: a pointer
 * prefixes `*`, an array or function suffixes `[n]` / `(…)`, with parentheses when a pointer
 * declarator meets a suffix.
 *
 * Rendering is bounded (depth and total nodes): a hostile BTF can nest prototypes so that the
 * full text would be exponentially long; past the bound the rest is shown as `...`.
 */
import type { BtfType } from './types.ts';

export interface TypeLookup {
  typeById(id: number): BtfType;
}

const MAX_DEPTH = 32;
const MAX_NODES = 1024;

interface Budget {
  nodes: number;
}

function join(base: string, declarator: string): string {
  return declarator === '' ? base : `${base} ${declarator}`;
}

function parenthesizePointer(declarator: string): string {
  return declarator.startsWith('*') ? `(${declarator})` : declarator;
}

/**
 * The C declaration of type `id` around `declarator` (a name, or '' for an abstract
 * declarator as in a cast: `typeName`).
 */
export function declaration(types: TypeLookup, id: number, declarator = ''): string {
  return render(types, id, declarator, 0, { nodes: MAX_NODES });
}

function render(types: TypeLookup, id: number, decl: string, depth: number, budget: Budget): string {
  if (depth > MAX_DEPTH || --budget.nodes < 0) return join('...', decl);
  const t = types.typeById(id);
  switch (t.kind) {
    case 'void':
      return join('void', decl);
    case 'int':
    case 'float':
    case 'typedef':
      return join(t.name, decl);
    case 'struct':
    case 'union':
      return join(`${t.kind} ${t.name || '{...}'}`, decl);
    case 'enum':
    case 'enum64':
      return join(`enum ${t.name || '{...}'}`, decl);
    case 'fwd':
      return join(`${t.fwdKind} ${t.name}`, decl);
    case 'ptr':
      return render(types, t.typeId, `*${decl}`, depth + 1, budget);
    case 'const':
    case 'volatile':
    case 'restrict': {
      const target = types.typeById(t.typeId);
      // A qualified pointer: the qualifier goes after its `*` (`char *const p`).
      if (target.kind === 'ptr') return render(types, target.typeId, `*${t.kind}${decl === '' ? '' : ` ${decl}`}`, depth + 2, budget);
      return `${t.kind} ${render(types, t.typeId, decl, depth + 1, budget)}`;
    }
    case 'type_tag':
    case 'decl_tag':
      return render(types, t.typeId, decl, depth + 1, budget);
    case 'array':
      return render(types, t.typeId, `${parenthesizePointer(decl)}[${t.nelems}]`, depth + 1, budget);
    case 'func_proto': {
      const params: string[] = [];
      for (const p of t.params) {
        if (budget.nodes <= 0) {
          params.push('...');
          break;
        }
        params.push(render(types, p.typeId, p.name, depth + 1, budget));
      }
      if (t.variadic) params.push('...');
      const list = params.length === 0 ? 'void' : params.join(', ');
      return render(types, t.returnTypeId, `${parenthesizePointer(decl)}(${list})`, depth + 1, budget);
    }
    case 'func':
      return render(types, t.typeId, decl === '' ? t.name : decl, depth + 1, budget);
    case 'var':
      return render(types, t.typeId, decl === '' ? t.name : decl, depth + 1, budget);
    case 'datasec':
      return join(`SEC("${t.name}")`, decl);
  }
}
