"""`lite-llama` command line. `lite-llama demo`: load the bundled SmolLM2-135M-Instruct, answer one chat prompt
with and without lite-llama's kernels, and show that the answers agree."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import torch

    from litekernels.generation.loading import load_model
    from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama
    from litekernels.utils import backend_name

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"loading {args.model or 'bundled SmolLM2-135M-Instruct'} on {device} ...", flush=True)
    model, tok = load_model(args.model, dtype=args.dtype, device=device)
    messages = [{"role": "user", "content": args.prompt}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]

    def run():
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        return out[0, n_prompt:], time.perf_counter() - t0

    apply_lite_llama(model)
    print(f"patched: {lite_llama_summary(model)}; ops run on: {backend_name(device)}")
    ours, t_ours = run()
    revert_lite_llama(model)
    theirs, t_theirs = run()
    print(f"\nprompt: {args.prompt}\nlite-llama ({t_ours:.2f} s): {tok.decode(ours, skip_special_tokens=True)}")
    print(f"unpatched  ({t_theirs:.2f} s): {tok.decode(theirs, skip_special_tokens=True)}")
    same = torch.equal(ours, theirs)
    print("greedy tokens identical" if same else "greedy tokens DIFFER")
    return 0 if same else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lite-llama", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="patched vs unpatched greedy answer on the bundled model")
    demo.add_argument("--prompt", default="What is the capital of France?")
    demo.add_argument("--model", default=None, help="HF checkpoint directory or .gguf file (default: bundled)")
    demo.add_argument("--max-new-tokens", type=int, default=20)
    demo.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.max_new_tokens <= 0:
            parser.error("--max-new-tokens must be positive")
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
