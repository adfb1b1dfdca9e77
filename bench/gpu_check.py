"""GPU check of the student's training path: FSDP2 on nccl in bfloat16, a checkpoint, a kill-free resume, the export.

What it does, with the real launcher (`launch_training`: torchrun, FSDP2, the training loop of lion_nb.train):
  1. trains SmolLM2-135M (the embedded student, `lion_nb.models.student_checkpoint`, when it is prepared on that
     machine; else a random model of exactly its shape: 30 layers, width 576, 9 heads, 3 KV heads, vocabulary
     49,152, tied embeddings; or `--model PATH`) for `--steps` optimizer steps on every visible GPU, stopping at
     half way: a sharded checkpoint and a first export are written;
  2. launches again for all the steps: it resumes from that checkpoint (checked in its log), trains the rest and
     writes the streamed bfloat16 export, which is reloaded with `from_pretrained` and asked to generate;
  3. (placeholder) serves the export with vLLM: see `vllm_check`, filled in by the student-generation work.
It reports training tokens/s (real tokens, steps after the first of each launch), peak GPU memory on rank 0,
MFU (6 x parameters x tokens/s over the GPUs' peak bf16 FLOP/s; attention FLOPs left out), checkpoint,
resume and export times, then prints one JSON line last.

    python bench/gpu_check.py                 # on a GPU machine: at most a few minutes on one H200
    python bench/gpu_check.py --cpu-smoke     # the same path on 2 CPU processes (gloo), a tiny Llama, 4 steps

On the GPU machine run it through `bench/gpu_check.sh`, which sets the environment up (see there).
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import torch
from lion_nb.core import TrainConfig, read_json, read_log, write_jsonl
from lion_nb.train import export_complete, launch_training, make_tiny_llama, toy_sft_records

PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0}   # dense, per GPU, from the vendors' sheets


def long_records(n: int, words: int) -> list[dict]:
    "Toy SFT records with answers of about `words` words, so that rows fill up like real teacher answers."
    recs = toy_sft_records(n)
    for r in recs: r['output'] = ' '.join([r['output']] * max(1, words // max(1, len(r['output'].split()))))
    return recs


def peak_tflops() -> float:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float('nan'))


SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
                    rms_norm_eps=1e-5)


def smollm2_shaped(folder: Path) -> Path:
    "A random Llama of SmolLM2-135M's shape, with the tiny byte-level tokenizer (ids fit its vocabulary)."
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    make_tiny_llama(folder, chat_template=False)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = LlamaConfig(**SMOLLM2_135M, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def student_model(work: Path, model: str = None) -> Path:
    "`--model`, else the prepared embedded student, else a random model of its shape."
    if model: return Path(model)
    from lion_nb import models
    prepared = models.models_dir() / models.STUDENT_NAME
    return prepared if models.is_prepared_checkpoint(prepared) else smollm2_shaped(work / 'smollm2-135m-shaped')


def setup(cpu_smoke: bool, work: Path, steps: int, model: str = None) -> tuple[Path, TrainConfig, int, list[dict]]:
    if cpu_smoke:
        model = make_tiny_llama(work / 'tiny', chat_template=False)
        cfg = TrainConfig(epochs=1, lr=3e-3, max_length=128, micro_batch=2, effective_batch=8, device='cpu')
        return model, cfg, 2, long_records(64, 12)
    n = torch.cuda.device_count()
    cfg = TrainConfig(epochs=1, lr=2e-5, max_length=1024, micro_batch=8, effective_batch=64 * n, device='cuda',
                      gradient_checkpointing=True, packing=True)
    return student_model(work, model), cfg, n, long_records(steps * 64 * n, 300)


def launch(data, model, out, cfg, nproc, steps) -> tuple[list[str], float]:
    lines, t0 = [], time.perf_counter()
    launch_training(data, model, out, cfg, nproc, seed=0, max_steps=steps, echo=lines.append)
    return lines, time.perf_counter() - t0


def vllm_check(model_dir: Path, args) -> dict:
    "PLACEHOLDER for the vLLM part (issue 14, student generation): serve `model_dir`, answer 500 prompts, tokens/s."
    return {'vllm': 'not part of this script yet'}


def generate_check(model_dir: Path, device: str) -> dict:
    "The export reloads with from_pretrained (bfloat16) and generates."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok, t0 = AutoTokenizer.from_pretrained(model_dir), time.perf_counter()
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    ids = tok('Below is an instruction.\n\n### Instruction:\nName three colours.\n\n### Response:\n', return_tensors='pt').to(device)
    out = m.generate(**ids, max_new_tokens=16, do_sample=False)
    return {'reload_s': round(time.perf_counter() - t0, 2), 'generated_tokens': int(out.shape[1] - ids['input_ids'].shape[1]),
            'dtype': str(m.dtype)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu-smoke', action='store_true', help="gloo on 2 CPU processes with a tiny Llama")
    ap.add_argument('--steps', type=int, help="optimizer steps in all (default 40 on GPU, 4 with --cpu-smoke)")
    ap.add_argument('--out', help="work folder (default: a temporary one)")
    ap.add_argument('--model', help="a Hugging Face model folder to train instead of SmolLM2-135M")
    a = ap.parse_args()
    steps = a.steps or (4 if a.cpu_smoke else 40)
    work = Path(a.out or tempfile.mkdtemp(prefix='lion_gpu_check_'))
    model, cfg, nproc, recs = setup(a.cpu_smoke, work, steps, a.model)
    data, out = write_jsonl(work / 'sft.jsonl', recs), work / 'run'
    cfg = cfg.model_copy(update={'save_every': steps // 2})
    first, t_first = launch(data, model, out, cfg, nproc, steps // 2)          # checkpoint at half way (and an export)
    second, t_second = launch(data, model, out, cfg, nproc, steps)             # resumes from it, trains the rest
    resumed = any(f'resumed from step_{steps // 2:06d}' in l for l in second)
    summary, shards = read_json(out / 'train_summary.json'), read_json(out / 'shards.json')
    log = read_log(out / 'train_log.jsonl')
    timed = [r for r in log if r['step'] not in (1, steps // 2 + 1)]           # leave out each launch's first step
    tok_s = sum(r['tokens'] for r in timed) / sum(r['time_s'] for r in timed)
    world, n_params = shards['world'], shards['total']
    mfu = 6 * n_params * tok_s / (peak_tflops() * 1e12 * world) if not a.cpu_smoke else None
    gen = generate_check(out / 'model', 'cpu' if a.cpu_smoke else 'cuda')
    res = {'mode': 'cpu-smoke' if a.cpu_smoke else 'gpu', 'device': torch.cuda.get_device_name(0) if not a.cpu_smoke else 'cpu',
           'model': str(model), 'world': world, 'params': n_params, 'steps': steps, 'resumed_from_checkpoint': resumed,
           'export_complete': export_complete(out / 'model', steps), 'train_tokens_per_s': round(tok_s, 1),
           'peak_mem_gb_rank0': summary['peak_mem_gb_rank0'], 'mfu': round(mfu, 4) if mfu is not None else None,
           'export_s': summary['export_s'], 'first_launch_s': round(t_first, 1), 'second_launch_s': round(t_second, 1),
           'final_loss': log[-1]['loss'], **gen, **vllm_check(out / 'model', a)}
    print(f"\n{'check':<28} value")
    for k, v in res.items(): print(f"{k:<28} {v}")
    print(json.dumps(res))
    return 0 if resumed and res['export_complete'] else 1


if __name__ == '__main__':
    sys.exit(main())
