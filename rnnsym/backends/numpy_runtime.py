"""Helpers every generated kernel carries, copied verbatim into the generated module.

The generated module must run with NumPy alone, so these functions are part of its text; this
file is their single source and is imported by rnnsym's tests like any module. Arrays use the
row layout: a vector quantity of one step is an array (B, size), a sequence is (T, B, size).
"""

import numpy as np


def _sigmoid(a):
    # 1 / (1 + exp(-a)) without overflow for any a, to a few ulp. Below 512 entries (where
    # the number of NumPy calls costs most) as exp(-log(1 + exp(-a))); above, with one
    # exponential instead of two: with e = exp(-|a|) <= 1, 1 / (1 + e) where a >= 0 and
    # e / (1 + e) where a < 0
    if a.size < 512:
        return np.exp(-np.logaddexp(0.0, -a))
    e = np.exp(-np.abs(a))
    out = np.where(a >= 0, 1.0, e)
    out /= 1.0 + e
    return out


def _softplus(a):
    # log(1 + exp(a)) without overflow for large a
    return np.logaddexp(0.0, a)


def _log_sigmoid(a):
    # log(1 / (1 + exp(-a))) = -softplus(-a), finite for large |a|
    return -np.logaddexp(0.0, -a)


def _logsumexp(a):
    # log(sum(exp(a))) over the last axis, the maximum subtracted first (no overflow)
    top = np.max(a, axis=-1, keepdims=True)
    return top + np.log(np.sum(np.exp(a - top), axis=-1, keepdims=True))


def _softmax(a):
    # exp(a) / sum(exp(a)) over the last axis, the maximum subtracted first (no overflow)
    e = np.exp(a - np.max(a, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _relu(a):
    return np.maximum(a, 0.0)


def _step(a):
    # Heaviside step, the derivative of relu (0 at a = 0)
    return (a > 0).astype(a.dtype)


def _mm(v, a, out=None):
    # rows of v (any leading axes) times the matrix a, as one 2-D matrix product
    if out is None:
        return (v.reshape(-1, v.shape[-1]) @ a).reshape(v.shape[:-1] + (a.shape[-1],))
    np.matmul(v.reshape(-1, v.shape[-1]), a, out=out.reshape(-1, a.shape[-1]))
    return out


def _zeros(like, size):
    # zeros with the leading (time, batch) axes of like and size columns
    return np.zeros(like.shape[:-1] + (size,), dtype=like.dtype)


def _rows(like, p):
    # the vector p repeated in every row of like's leading (time, batch) axes, to be stacked
    # with per-step data
    return np.broadcast_to(p, like.shape[:-1] + p.shape[-1:])


def _pad(g, start, total):
    # g placed at rows start.. of a zero vector of total rows (the adjoint of a slice)
    out = np.zeros(g.shape[:-1] + (total,), dtype=g.dtype)
    out[..., start : start + g.shape[-1]] = g
    return out


def _sum_outer(u, v):
    # sum over time and batch of the outer products u(t, b) v(t, b)^T: one matrix product
    return u.reshape(-1, u.shape[-1]).T @ v.reshape(-1, v.shape[-1])


def _sum_rows(u):
    # sum over time and batch of the vectors u(t, b)
    return u.reshape(-1, u.shape[-1]).sum(axis=0)


def _linear_scan(a, b, h0, out):
    # out[0] = h0, out[t + 1] = a[t] * out[t] + b[t] for t = 0..T-1: the linear recurrence
    # h(t) = a(t) h(t-1) + b(t) as a two-level parallel scan. The T steps are cut into blocks
    # of about sqrt(T). (1) Every block is scanned from zero, all blocks at once (one array
    # operation per position in a block), keeping only its last value and the product of its
    # coefficients; (2) the value entering each block follows from those, block by block;
    # (3) every block is run again from its entering value, all blocks at once. About
    # 7 sqrt(T) array operations instead of 2 T; products and sums only (no division or
    # logarithm), so coefficients of any sign, 0 and 1 included, are exact and nothing
    # overflows for T up to 10**6 when |a| <= 1. ``out`` may be a reversed view.
    T = out.shape[0] - 1
    a = np.broadcast_to(a, (T,) + out.shape[1:])  # a parameter-only a or b: the same each step
    b = np.broadcast_to(b, a.shape)
    out[0] = h0
    size = max(1, int(T**0.5))  # steps per block
    blocks = T // size
    full = blocks * size if blocks > 1 else 0
    if full:
        shape = (blocks, size) + a.shape[1:]
        A, Bs = a[:full].reshape(shape), b[:full].reshape(shape)
        part = out[1 : full + 1]  # written through this view: made explicitly, never a copy
        H = np.lib.stride_tricks.as_strided(part, shape, (part.strides[0] * size,) + part.strides)
        last, product = Bs[:, 0].copy(), A[:, 0].copy()
        for j in range(1, size):
            last *= A[:, j]
            last += Bs[:, j]
            product *= A[:, j]
        entering = np.empty_like(last)
        entering[0] = out[0]
        for k in range(1, blocks):
            np.multiply(product[k - 1], entering[k - 1], out=entering[k])
            entering[k] += last[k - 1]
        np.multiply(A[:, 0], entering, out=H[:, 0])
        H[:, 0] += Bs[:, 0]
        for j in range(1, size):
            np.multiply(A[:, j], H[:, j - 1], out=H[:, j])
            H[:, j] += Bs[:, j]
    for t in range(full, T):
        np.multiply(a[t], out[t], out=out[t + 1])
        out[t + 1] += b[t]
    return out


def _linear_scan_reverse(a, c, out):
    # out[t] = c[t] + a[t + 1] * out[t + 1] for t = T-2..0, out[T-1] = c[T-1]: the adjoint
    # recurrence of h(t) = a(t) h(t-1) + b(t), the same scan run backwards in t (on reversed
    # views, no copy); ``a`` is the forward coefficient a(t).
    a = np.broadcast_to(a, c.shape)
    return _linear_scan(a[1:][::-1], c[:-1][::-1], c[-1], out[::-1])[::-1]


def _add_seed(block, z, r, start):
    # block (rows * cols, B, size): the sensitivities of a vector of size entries to the
    # entries of a rows x cols parameter P, row by row. Adds the variation of
    # z * (P r)[start:start + size] along each entry: entry (i, j) moves entry i - start by
    # z[i - start] r[j]. z is (B, size) or 1.0, r is (B, cols) or 1.0 (a vector parameter).
    if not block.flags.c_contiguous:
        raise ValueError("internal error: _add_seed needs a C-contiguous block")
    batch, size = block.shape[1:]
    cols = np.shape(r)[-1] if np.ndim(r) else 1
    view = block.reshape(-1, cols, batch, size)  # (rows, cols, B, size), a view of block
    k = np.arange(size)
    zt = np.broadcast_to(z, (batch, size)).T[:, None, :]
    rt = np.broadcast_to(r, (batch, cols)).T[None, :, :]
    view[start + k, :, :, k] += zt * rt
    return block


_WORKSPACE = {}  # (array name, shape, dtype) -> the array, for the next call
_OWNER = {}  # "call": the token of the call that holds the workspace, while it runs


def _claim():
    # a token for this call, or None while another call (another thread) holds the workspace:
    # that call then allocates its own arrays (dict.setdefault is atomic)
    token = object()
    return token if _OWNER.setdefault("call", token) is token else None


def _release(token):
    if token is not None:
        _OWNER.clear()


def _workspace(token, name, shape, dtype):
    # the whole-sequence array `name` of _loss_and_grad for these shapes, kept from the last
    # call (a fresh array of a few MB is page-faulted in on every call); never an array the
    # kernel returns; a fresh one for a call without the workspace token
    if token is None:
        return np.empty(shape, dtype=dtype)
    key = (name, shape, dtype)
    array = _WORKSPACE.get(key)
    if array is None:
        if len(_WORKSPACE) >= 256:
            _WORKSPACE.clear()
        array = _WORKSPACE[key] = np.empty(shape, dtype=dtype)
    return array


def clear_workspaces():
    """Free the arrays kept between calls of loss_and_grad and vjp (they are reallocated, at
    the cost of their page faults, by the next call)."""
    _WORKSPACE.clear()


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_arrays(spec, params, inputs, targets, initial, with_targets=True):
    """Validate the arrays against SPEC; return (sizes, T, B, dtype, states, inputs, targets).

    The returned inputs and targets are ready for the kernel: a context input given once per
    sequence, (B, size) or (size,), is broadcast over time; class indices (T, B) become 1-of-K
    rows; an input fed back from a target (teacher forcing, y(t-1)) is filled from it with
    y(0) = 0 unless given. Every failure raises ValueError naming the array, its shape or dtype
    and what was expected.
    """
    # a call whose arrays have the names, shapes and dtypes of one that passed is not checked
    # again (the checks cost more than a small kernel); anything else is checked in full
    key = _signature(spec, params, inputs, targets, initial, with_targets)
    known = _CHECKED.get(key) if key is not None else None
    if known is not None:
        sizes, T, B, dtype = known
        return sizes, T, B, dtype, _initial_states(spec, sizes, B, dtype, initial), inputs, targets
    checked = _check_all(spec, params, inputs, targets, initial, with_targets)
    if key is not None:
        if len(_CHECKED) >= 64:
            _CHECKED.clear()
        _CHECKED[key] = checked[:4]
    return checked


def _signature(spec, params, inputs, targets, initial, with_targets):
    # names, shapes and dtypes of plain NumPy arrays in plain dicts, for a cell whose inputs
    # need no preparation (no context input, class indices or fed-back target); else None
    if spec.get("context") or spec.get("classes") or spec.get("fed_back"):
        return None
    groups = (params, inputs, targets) if with_targets else (params, inputs)
    key = [id(spec), with_targets]
    for group in groups:
        if type(group) is not dict:
            return None
        for name, array in group.items():
            if type(array) is not np.ndarray:
                return None
            key.append((name, array.shape, array.dtype.char))
        key.append(None)
    if isinstance(initial, dict):
        items = initial.items()
    else:
        items = [(None, initial)]
    for name, value in items:
        if value is None:
            key.append((name, None))
        elif type(value) is np.ndarray:
            key.append((name, value.shape, value.dtype.char))
        else:
            return None
    return tuple(key)


def _require_array(label, array):
    # the array type this module takes (every backend's runtime has its own version)
    if not isinstance(array, np.ndarray) or isinstance(array, np.matrix):
        raise ValueError(f"{label} must be a NumPy array, got {type(array).__name__}")


def _is_integer(array):
    return array.dtype.kind in "iu"


def _is_float(array):
    return array.dtype in (np.float32, np.float64)


def _given_states(spec, initial):
    # h0 as a dict {state: array or None}: None, one array (a cell with one state) or a dict
    if initial is None:
        return {}
    if not isinstance(initial, dict):
        if len(spec["states"]) != 1:
            raise ValueError(
                f"h0 must be a dict with keys {sorted(spec['states'])} for a cell with "
                f"{'no' if not spec['states'] else 'several'} states, got "
                f"{type(initial).__name__}"
            )
        return {next(iter(spec["states"])): initial}
    return initial


def _check_shapes(spec, params, inputs, targets, initial, with_targets=True):
    # the names, shapes and dtypes of every array and of h0 against SPEC, no value read;
    # (sizes, T, B, dtype), each failure a ValueError naming the array
    context = spec.get("context", ())
    classes = spec.get("classes", ())
    fed_back = spec.get("fed_back", {})
    groups = [("params", params, spec["params"], False)]
    groups.append(("inputs", inputs, spec["inputs"], True))
    if with_targets:
        groups.append(("targets", targets, spec["targets"], True))
    for group, given, expected, _ in groups:
        if not isinstance(given, dict):
            raise ValueError(
                f"{group} must be a dict mapping names to arrays, got {type(given).__name__}"
            )
        missing = [
            name
            for name in expected
            if name not in given and not (group == "inputs" and with_targets and name in fed_back)
        ]
        extra = [name for name in given if name not in expected]
        if missing:
            name = missing[0]
            hint = ""
            if group == "inputs" and name in fed_back:
                hint = (
                    f" (the fed-back {fed_back[name]}(t-1): loss_and_grad fills it from "
                    f"targets[{fed_back[name]!r}], forward needs it given)"
                )
            elif group == "inputs" and name in context:
                hint = " or (B, size), once per sequence"
            raise ValueError(
                f"{group}[{name!r}] is missing; expected an array of shape "
                f"{_expected_text(expected[name], group != 'params')}{hint}"
            )
        if extra:
            raise ValueError(
                f"{group}[{extra[0]!r}] is not a name of this kernel; expected "
                f"{group} {sorted(expected)}"
            )
    dtype = None
    dtype_source = None
    sizes = {}
    size_source = {}
    votes = {}  # plain size name -> [(value, label)], in the order the arrays are read
    steps = None
    batches = []  # (batch, label) of the context inputs, checked once B is known
    bodies = {}
    for group, given, expected, is_sequence in groups:
        for name, dims in expected.items():
            if name not in given:
                continue  # a fed-back input, filled by the caller
            label = f"{group}[{name!r}]"
            array = given[name]
            _require_array(label, array)
            if group == "targets" and name in classes:
                if not _is_integer(array):
                    raise ValueError(
                        f"{label} holds class indices: expected an integer array (T, B), got "
                        f"dtype {array.dtype}"
                    )
                if array.ndim != 2:
                    raise ValueError(
                        f"{label} has shape {_shape_text(array.shape)}; expected (T, B) class "
                        f"indices in 0..{dims[0]}-1"
                    )
                steps = _same_steps(steps, array, label)
                continue
            if not _is_float(array):
                raise ValueError(f"{label} has dtype {array.dtype}; expected float32 or float64")
            if dtype is None:
                dtype, dtype_source = array.dtype, label
            elif array.dtype != dtype:
                raise ValueError(
                    f"{label} has dtype {array.dtype}, but {dtype_source} has dtype {dtype}; "
                    f"all arrays must share one dtype"
                )
            if is_sequence and group == "inputs" and name in context:
                if array.ndim not in (1, 2):
                    raise ValueError(
                        f"{label} has shape {_shape_text(array.shape)}; expected "
                        f"{_expected_text(dims, False)} or (B, {', '.join(map(str, dims))}): "
                        f"a context input is given once per sequence"
                    )
                if array.ndim == 2:
                    batches.append((array.shape[0], label))
                body, as_sequence = tuple(array.shape[-1:]), False
            elif is_sequence:
                if array.ndim != 3:
                    raise ValueError(
                        f"{label} has shape {_shape_text(array.shape)}; expected "
                        f"{_expected_text(dims, True)} (time, batch, size)"
                    )
                steps = _same_steps(steps, array, label)
                body, as_sequence = tuple(array.shape[2:]), True
            else:
                body, as_sequence = tuple(array.shape), False
            _match(label, body, dims, None, votes, tuple(array.shape), as_sequence)
            bodies[label] = (dims, body, tuple(array.shape), as_sequence)
    # each plain size takes the value most arrays agree on (the data's value on a tie), so an
    # error names the array that is inconsistent with the others, not the first one read
    for dim, seen in votes.items():
        counts = {}
        for got, label in seen:
            count, has_data, labels = counts.get(got, (0, False, []))
            counts[got] = (count + 1, has_data or not label.startswith("params"), labels + [label])
        value = max(counts, key=lambda v: counts[v][:2])
        sizes[dim], size_source[dim] = value, counts[value][2]
    for label, (dims, body, shape, is_sequence) in bodies.items():
        _match(label, body, dims, sizes, size_source, shape, is_sequence)
    # sizes such as 4*n or n + m are checked once every plain size is known
    for label, (dims, body, shape, is_sequence) in bodies.items():
        for axis, (dim, got) in enumerate(zip(dims, body, strict=True)):
            if isinstance(dim, int) or dim.isidentifier():
                continue
            want = _resolve(dim, sizes)
            if got != want:
                concrete = tuple(_resolve(d, sizes) for d in dims)
                raise ValueError(
                    f"{label} has shape {_shape_text(shape)}; expected "
                    f"{_expected_text(dims, is_sequence)} = "
                    f"{_expected_text(concrete, is_sequence)}: axis {axis} must be {dim} "
                    f"= {want}"
                )
    if steps is None:
        raise ValueError(
            "no sequence to take T and B from: give at least one input as a (T, B, size) array"
        )
    T, B = steps[0], steps[1]
    if T < 1 or B < 1:
        raise ValueError(f"{steps[2]} has {T} steps and batch {B}; both must be at least 1")
    for batch, label in batches:
        if batch != B:
            raise ValueError(
                f"{label} has batch {batch}, but {steps[2]} has batch {B}; a context input is "
                f"(B, size) or (size,)"
            )
    given = _given_states(spec, initial)
    extra = [name for name in given if name not in spec["states"]]
    if extra:
        raise ValueError(
            f"h0[{extra[0]!r}] is not a state of this kernel; states: {sorted(spec['states'])}"
        )
    for name, dims in spec["states"].items():
        value = given.get(name)
        if value is None:
            continue
        label = f"h0[{name!r}]"
        size = _resolve(dims[0], sizes)
        if not hasattr(value, "dtype") or value.dtype != dtype:
            got = getattr(value, "dtype", type(value).__name__)
            raise ValueError(f"{label} must be a {dtype} array like the others, got {got}")
        _require_array(label, value)
        if tuple(value.shape) not in ((B, size), (size,)):
            raise ValueError(
                f"{label} has shape {_shape_text(tuple(value.shape))}; expected ({B}, {size}) "
                f"(batch, size) or ({size},)"
            )
    return sizes, T, B, dtype


def _check_all(spec, params, inputs, targets, initial, with_targets=True):
    # every check of _check_arrays, then the inputs and targets made ready for the kernel
    sizes, T, B, dtype = _check_shapes(spec, params, inputs, targets, initial, with_targets)
    inputs = dict(inputs)
    for name in spec.get("context", ()):
        if name in inputs:
            array = inputs[name]
            inputs[name] = np.broadcast_to(array, (T, B, array.shape[-1]))
    if with_targets:
        targets = dict(targets)
        for name in spec.get("classes", ()):
            try:
                size = _resolve(spec["targets"][name][0], sizes)
            except KeyError:
                raise ValueError(
                    f"targets[{name!r}] holds class indices, but the number of classes "
                    f"{spec['targets'][name][0]} is not the size of any other array"
                ) from None
            index = targets[name]
            bad = np.argwhere((index < 0) | (index >= size))
            if len(bad):
                t, b = (int(i) for i in bad[0])
                raise ValueError(
                    f"targets[{name!r}][{t}, {b}] = {int(index[t, b])} is not a class index; "
                    f"expected 0..{size - 1} ({spec['targets'][name][0]} = {size} classes)"
                )
            targets[name] = np.eye(size, dtype=dtype)[index]
        for name, target in spec.get("fed_back", {}).items():
            if name not in inputs:
                shifted = np.zeros_like(targets[target])
                shifted[1:] = targets[target][:-1]  # y(t-1), with y(0) = 0
                inputs[name] = shifted
    states = _initial_states(spec, sizes, B, dtype, initial)
    return sizes, T, B, dtype, states, inputs, targets


def _initial_states(spec, sizes, B, dtype, initial):
    # h(0) of every state, (B, size), from h0 as _check_shapes passed it: zeros where not given
    given = _given_states(spec, initial)
    states = {}
    for name, dims in spec["states"].items():
        size = _resolve(dims[0], sizes)
        value = given.get(name)
        if value is None:
            states[name] = np.zeros((B, size), dtype=dtype)
        else:
            states[name] = np.array(np.broadcast_to(value, (B, size)), dtype=dtype)
    return states


_CHECKED = {}  # shape signature of a call whose arrays passed -> (sizes, T, B, dtype)


def _same_steps(steps, array, label):
    # (T, B, label of the first sequence): every sequence must have the same T and B
    if steps is None:
        return (array.shape[0], array.shape[1], label)
    if array.shape[:2] != steps[:2]:
        raise ValueError(
            f"{label} has {array.shape[0]} steps and batch {array.shape[1]}, but "
            f"{steps[2]} has {steps[0]} steps and batch {steps[1]}; sequences "
            f"must not be ragged"
        )
    return steps


def _resolve(dim, sizes):
    if isinstance(dim, int):
        return dim
    if dim.isidentifier():
        return sizes[dim]
    return eval(dim, {"__builtins__": {}}, dict(sizes))  # noqa: S307 - a size from SPEC


def _expected_text(dims, is_sequence):
    inner = ", ".join(str(d) for d in dims)
    if is_sequence:
        return f"(T, B, {inner})"
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def _match(label, body, dims, sizes, source, shape, is_sequence):
    # with sizes None: record the value each plain size has in this array (source: the votes);
    # otherwise check the array against the decided sizes (source: the arrays that agree)
    if len(body) != len(dims):
        raise ValueError(
            f"{label} has shape {_shape_text(shape)}; expected {_expected_text(dims, is_sequence)}"
        )
    for axis, (dim, got) in enumerate(zip(dims, body, strict=True)):
        if isinstance(dim, int):
            if got != dim:
                raise ValueError(
                    f"{label} has shape {_shape_text(shape)}; expected "
                    f"{_expected_text(dims, is_sequence)}: axis {axis} must be {dim}"
                )
        elif not dim.isidentifier():
            continue  # a compound size such as 4*n: checked once the plain sizes are known
        elif got < 1:
            raise ValueError(f"{label} has shape {_shape_text(shape)}; {dim} must be >= 1")
        elif sizes is None:
            source.setdefault(dim, []).append((got, label))
        elif sizes[dim] != got:
            concrete = tuple(_resolve(d, sizes) for d in dims)
            other = next((other for other in source[dim] if other != label), None)
            raise ValueError(
                f"{label} has shape {_shape_text(shape)}; expected "
                f"{_expected_text(dims, is_sequence)} = {_expected_text(concrete, is_sequence)} "
                f"with {dim} = {sizes[dim]} from {other or f'axis {dims.index(dim)} of it'}"
            )


def _erf(a):
    # the error function entry by entry (NumPy has none): math.erf over the array
    import math

    a = np.asarray(a)
    return np.vectorize(math.erf, otypes=[a.dtype])(a)


def _erfc(a):
    # the complementary error function 1 - erf(a), entry by entry, accurate for large a
    import math

    a = np.asarray(a)
    return np.vectorize(math.erfc, otypes=[a.dtype])(a)
