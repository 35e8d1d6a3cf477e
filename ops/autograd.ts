/**
 * Reverse-mode autograd: a tape of op records, each with its backward rule.
 *
 * An op calls {@link record} after computing its output; if grad mode is on and any input
 * requires grad, the output requires grad and a node joins the tape. {@link backward} walks the
 * tape in reverse and accumulates gradients into the `.grad` of leaves that require grad (kept,
 * category "grads"); intermediate gradients are ordinary tensors of the enclosing scope.
 * A frozen weight (requiresGrad false) never gets a gradient buffer.
 *
 * Saved tensors: a node holds the tensors its rule reads (`saves`, or, when an op does not say,
 * all its inputs and its output) until the rule has run, so a model may {@link Tensor.release}
 * an intermediate as soon as its forward consumers are done: it is freed then, or right after
 * the last rule reading it. Intermediate gradients count as "activations" (they are the
 * gradients of activations, gone when the pass ends); only leaves' `.grad` count as "grads".
 *
 * @module
 */
import { type Tensor, withCategory } from "./tensor.ts";

/**
 * Computes the gradients of an op's inputs from the gradient of its output (null: none).
 * `sumInto(i)`, when given, is the gradient already pending for input i (another consumer's),
 * contiguous f32 and owned by nobody else, or null: a rule may add its gradient for input i into
 * it (a product's accumulating epilogue) and return that tensor as input i's gradient, which then
 * counts as summed — no separate add. A rule that ignores it returns fresh gradients as before.
 */
export type BackwardFn = (
  gradOutput: Tensor,
  sumInto?: (input: number) => Tensor | null,
) => (Tensor | null)[];

interface Node {
  output: Tensor;
  inputs: readonly Tensor[];
  backward: BackwardFn;
  name: string;
  /** Tensors the rule reads, held until it has run. */
  held: readonly Tensor[];
}

/** Let go of what a node held (its rule ran, or the tape was dropped). */
function unholdAll(nodes: readonly Node[]): void {
  for (const n of nodes) for (const t of n.held) t.unhold();
}

let tape: Node[] = [];
let gradEnabled = true;

/** True when ops record onto the tape. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Run `fn` without recording (evaluation, optimizer updates).
 *
 * @example
 * ```ts
 * import { noGrad } from "./autograd.ts";
 * const out = noGrad(() => 1 + 1);
 * ```
 */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** True when an op over `inputs` must be recorded. */
export function needsGrad(...inputs: readonly Tensor[]): boolean {
  return gradEnabled && inputs.some((t) => t.requiresGrad);
}

/**
 * Record `output = op(inputs)` with its backward rule. Returns `output` (marked requiresGrad when
 * recorded). The rule returns one gradient per input, in order; entries for inputs that do not
 * require grad are ignored (return null to skip computing them).
 *
 * `saves` lists the tensors (inputs, the output, or the op's own intermediates) whose values the
 * rule reads; they are held until it has run, so a released tensor outlives its forward use
 * exactly as long as backward needs it. Without `saves`, every input and the output are held
 * (always safe). A rule that keeps what it reads in views of its own (which share the storage)
 * passes `[]`.
 */
export function record(
  name: string,
  output: Tensor,
  inputs: readonly Tensor[],
  backward: BackwardFn,
  saves?: readonly Tensor[],
): Tensor {
  if (!needsGrad(...inputs)) return output;
  output.requiresGrad = true;
  const held = [...new Set(saves ?? [...inputs, output])];
  for (const t of held) t.hold();
  tape.push({ output, inputs, backward, name, held });
  return output;
}

/** Number of nodes on the tape (for tests and leak checks). */
export function tapeLength(): number {
  return tape.length;
}

/** Drop the tape without computing gradients (e.g. after an evaluation forward pass). */
export function clearTape(): void {
  const nodes = tape;
  tape = [];
  unholdAll(nodes);
}

/** The node's inputs and output: tensors a rule may return as-is that others still own. */
function inputs(node: Node): Set<Tensor> {
  return new Set([...node.inputs, node.output]);
}

/** Hooks the elementwise module registers so autograd can add and fill without a cycle. */
export interface GradArith {
  /** a + b as a new tensor (broadcasting). */
  add(a: Tensor, b: Tensor): Tensor;
  /** target += value in place (sums gradients into `.grad`). */
  addInto(target: Tensor, value: Tensor): void;
  /** A tensor of ones (the gradient of a scalar loss). */
  ones(shape: readonly number[]): Tensor;
  /** A contiguous copy, owned by the current scope. */
  copy(value: Tensor): Tensor;
  /** A contiguous copy marked `.keep()`, so it outlives the current scope (category "grads"). */
  copyKept(value: Tensor): Tensor;
}

let arith: GradArith | null = null;

const backwardListeners: (() => void)[] = [];

/**
 * Call `listener` when a backward pass starts. Caches of forward-pass staging (the matmul's
 * layer-input packs) drop what only the forward could reuse.
 */
export function onBackwardStart(listener: () => void): void {
  backwardListeners.push(listener);
}

/** Called once by the elementwise module. */
export function registerGradArith(a: GradArith): void {
  arith = a;
}

/**
 * Backpropagate from `loss` (a scalar unless `gradOutput` is given). Leaves that require grad get
 * their gradient added to `.grad` (created, kept, on first use). The tape is cleared.
 */
export function backward(loss: Tensor, gradOutput?: Tensor): void {
  if (!arith) throw new Error("autograd arithmetic not registered (import ops/mod.ts)");
  const a = arith;
  if (!loss.requiresGrad) {
    clearTape();
    throw new Error("backward(): the loss does not depend on any tensor that requires grad");
  }
  if (!gradOutput && loss.size !== 1) {
    throw new Error(`backward(): loss must be a scalar, got shape [${loss.shape}]`);
  }
  const nodes = tape;
  tape = [];
  for (const l of backwardListeners) l();
  const produced = new Set<Tensor>(nodes.map((n) => n.output));
  // Gradients of intermediates are activations' gradients (PyTorch's "grads" are the leaves'
  // alone); a leaf's gradient is "grads" (see `leafRule`).
  withCategory("activations", () => {
    // Pending gradients of non-leaf tensors. One tensor may be pending for several keys (add's
    // g for both of its inputs): `holders` counts them, it is summed in place only while one key
    // holds it, and it is disposed once none does and its node has run.
    const grads = new Map<Tensor, Tensor>();
    const holders = new Map<Tensor, number>();
    const stored = { has: (t: Tensor) => (holders.get(t) ?? 0) > 0 };
    const unhold = (t: Tensor) => {
      const n = (holders.get(t) ?? 0) - 1;
      if (n > 0) holders.set(t, n);
      else holders.delete(t);
    };
    // Leaf gradients adopted by the node being processed (they must not be stored as well).
    let adopted = new Set<Tensor>();
    const store = (key: Tensor, value: Tensor) => {
      const v = adopted.has(value) || value === gradOutput ? a.copy(value) : value;
      if (v.category === "grads") v.setCategory("activations"); // made by a leaf's rule
      grads.set(key, v);
      holders.set(v, (holders.get(v) ?? 0) + 1);
    };
    const release = (t: Tensor) => {
      if (!stored.has(t) && t !== gradOutput && !t.disposed) t.dispose();
    };
    store(loss, gradOutput ?? a.ones(loss.shape));
    const prev = gradEnabled;
    gradEnabled = false;
    // Nodes below `done` still hold their tensors: the finally clause lets go of them.
    let done = nodes.length;
    try {
      for (let i = nodes.length - 1; i >= 0; i--) {
        const node = nodes[i];
        const g = grads.get(node.output);
        if (!g) {
          unholdAll([node]);
          done = i;
          continue;
        }
        grads.delete(node.output);
        unhold(g);
        // A rule that computes a leaf's gradient allocates in "grads", so that gradient (which
        // becomes `.grad`) is counted there from the start; its other results move back above.
        const leafRule = node.inputs.some((t) => t.requiresGrad && !produced.has(t) && !t.grad);
        // A pending gradient the rule may sum into in place: held by this key alone, owning its
        // storage, and not the gradient the rule reads.
        const handed = new Set<Tensor>();
        const sumInto = (j: number): Tensor | null => {
          const input = node.inputs[j];
          const before = input?.requiresGrad && produced.has(input) ? grads.get(input) : undefined;
          if (
            !before || holders.get(before) !== 1 || !before.ownsStorage || before.dtype !== "f32" ||
            before.sharesStorage(g) || before === gradOutput
          ) return null;
          handed.add(before);
          return before;
        };
        const inputGrads = withCategory(
          leafRule ? "grads" : "activations",
          () => node.backward(g, sumInto),
        );
        // Leaf gradients computed fresh by this rule become `.grad` as they are (no copy, and
        // no second buffer at the peak); a tensor also stored or handed to a second input is
        // copied instead.
        adopted = new Set<Tensor>();
        node.inputs.forEach((input, j) => {
          const gi = inputGrads[j];
          if (!gi || !input.requiresGrad) return;
          if (gi.shape.join() !== input.shape.join()) {
            throw new Error(
              `backward of ${node.name}: gradient shape [${gi.shape}] ≠ input shape [${input.shape}]`,
            );
          }
          if (produced.has(input)) {
            const before = grads.get(input);
            // The rule summed into the pending gradient it was handed (sumInto).
            if (before === gi && handed.has(gi)) return;
            if (
              before && holders.get(before) === 1 && before.ownsStorage &&
              !before.sharesStorage(gi)
            ) {
              a.addInto(before, gi); // sole holder: sum in place, no second buffer
            } else if (before) {
              unhold(before);
              store(input, a.add(before, gi));
              release(before);
            } else {
              store(input, gi);
            }
          } else if (input.grad) {
            a.addInto(input.grad, gi); // a leaf: accumulate into its persistent .grad
          } else if (
            gi.ownsStorage && gi.dtype === "f32" && !stored.has(gi) && !adopted.has(gi) &&
            gi !== gradOutput &&
            !inputs(node).has(gi)
          ) {
            input.grad = gi.setCategory("grads").keep();
            adopted.add(gi);
          } else {
            input.grad = a.copyKept(gi);
          }
        });
        for (const gi of inputGrads) if (gi && !adopted.has(gi)) release(gi);
        if (!adopted.has(g)) release(g);
        unholdAll([node]);
        done = i;
      }
    } finally {
      unholdAll(nodes.slice(0, done));
      gradEnabled = prev;
      for (const g of grads.values()) if (g !== gradOutput && !g.disposed) g.dispose();
    }
  });
}
