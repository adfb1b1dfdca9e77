"""Generation: the reply parser and post-filter on real-world shapes, and the whole stage (rounds, the exact
ROUGE-L filter, the pools of the next iteration, resume, the CLI, papermill) against a real local
OpenAI-compatible server with a scripted generator."""
import json, os, random, sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import last_user_text, serve  # noqa: E402

from lion_nb.core import InputError, Instruction, LionError, RunDir, parse_config, read_json, read_pool, sha256_file, write_jsonl  # noqa: E402
from lion_nb.dedup import reference_rouge_l  # noqa: E402
from lion_nb.judging import load_judge  # noqa: E402
from lion_nb.generation import (REASONS, GenerationSettings, Seed, generate_cli, generation_messages, parse_generation,  # noqa: E402
                                post_filter, run_generation)

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- replies as small models write them

KEEP = [
    ("### New instruction\nWrite instructions for assembling a bookshelf.\n### New input\nnone",
     ('Write instructions for assembling a bookshelf.', '')),                    # the word "instruction" is fine
    ("New instruction: Sort these numbers in descending order.\nNew input: 4, 9, 1",
     ('Sort these numbers in descending order.', '4, 9, 1')),
    ("**New Instruction:** Classify each animal as a mammal or a bird.\n**New Input:** eagle, whale, bat",
     ('Classify each animal as a mammal or a bird.', 'eagle, whale, bat')),
    ("## Instruction\nTranslate the sentence into German.\n\n## Input\nThe train is late.",
     ('Translate the sentence into German.', 'The train is late.')),
    ("```\n### New instruction\nFind the bug in the function.\n### New input\ndef f(x):\n    return x +\n```",
     ('Find the bug in the function.', 'def f(x):\n    return x +')),                 # a multi-line input, kept
    ("Describe the life cycle of a monarch butterfly in five sentences.",          # no headers at all
     ('Describe the life cycle of a monarch butterfly in five sentences.', '')),
    ("Input the readings into a table and compute their mean.",                   # 'Input' opening a sentence
     ('Input the readings into a table and compute their mean.', '')),
    ("### New instruction\nExplain the instruction pipeline of a CPU.\n### New input\nN/A",
     ('Explain the instruction pipeline of a CPU.', '')),
]

REJECT = [
    (("", 'stop', 'failed', 'empty response'), 'empty'),
    (("", None, 'failed', 'HTTP 500: server error'), 'failed'),
    (("### New instruction\n\n### New input\nsome text", 'stop', 'done', None), 'empty'),
    (("### New instruction\nWrite a detailed essay about the history of", 'length', 'done', None), 'truncated'),
    (("### New instruction\nSummarise the article.\n### New input\nIn 1850 the", 'length', 'done', None), 'truncated'),
    (("### New instruction\n<the new instruction>\n### New input\n<its input, or none>", 'stop', 'done', None), 'echo'),
    (("### New instruction\nWrite a haiku.\n### Example instruction\nWrite a poem.", 'stop', 'done', None), 'echo'),
    (("### New instruction\n1. Name three planets.", 'stop', 'done', None), None),              # a digit is alphanumeric
    (("### New instruction\n\"Name three planets.\"", 'stop', 'done', None), None),                # quotes around it: unwrapped
    (("### New instruction\n<Name three planets.>", 'stop', 'done', None), None),                   # our placeholder's shape
    (("### New instruction\n(a) Name three planets.", 'stop', 'done', None), 'punctuation'),
    (("### New instruction\n- Name three planets.", 'stop', 'done', None), 'punctuation'),
    (("### New instruction\nSummarise it.", 'stop', 'done', None), 'too_short'),
    (("### New instruction\n" + "word " * 151, 'stop', 'done', None), 'too_long'),
]


@pytest.mark.parametrize('text,want', KEEP)
def test_parser_and_filter_keep_good_replies(text, want):
    reason, p = post_filter(text, 'stop')
    assert reason is None and (p.instruction, p.input) == want


@pytest.mark.parametrize('args,reason', REJECT)
def test_filter_names_the_reason(args, reason):
    text, finish, status, error = args
    assert post_filter(text, finish, status, error)[0] == reason


def test_length_cut_after_a_complete_reply_is_kept():
    assert post_filter("### New instruction\nList four prime numbers.\n### New input\nnone", 'length')[0] is None


def test_prompts_carry_the_input_and_differ_by_kind():
    seed = Seed('s1', 'Summarise the text.', 'Bees make honey.')
    hard, easy = generation_messages(seed, 'hard')[1]['content'], generation_messages(seed, 'easy')[1]['content']
    assert 'Bees make honey.' in hard and 'Summarise the text.' in hard
    assert 'the same task type' in hard and 'same task type' not in easy and 'long tail' in easy
    assert 'none' in generation_messages(Seed('s2', 'Name a colour.'), 'hard')[1]['content']
    with pytest.raises(ValueError): generation_messages(seed, 'medium')


def test_generator_prompts_come_from_the_configured_judges():
    base = {'models': {'m': {'backend': 'openai', 'model': 'x'}},
            'roles': {r: 'm' for r in ('teacher', 'referee', 'generator', 'judge', 'student')}}
    s = GenerationSettings.from_config(parse_config({**base, 'judge_set': 'lion'}), 1)
    assert (s.temperature_by_kind, s.max_tokens_by_kind) == ({'hard': 1.0, 'easy': 1.0}, {'hard': 256, 'easy': 256})
    msgs = generation_messages(Seed('s1', 'Summarise the text.', 'Bees.'), 'easy', s.judges['easy'])
    assert msgs[0]['content'] == 'You are a helpful assistant.' and 'but be even more rare' in msgs[1]['content']
    assert msgs[1]['content'].endswith('Summarise the text.\n\n#Created Instruction#:')
    assert parse_generation('#Created Instruction#: Name three rare orchids of Borneo.').instruction == 'Name three rare orchids of Borneo.'
    over = GenerationSettings.from_config(parse_config({**base, 'sampling': {'generator_temperature': 0.3}}), 1)
    assert over.temperature_by_kind == {'hard': 0.3, 'easy': 0.3}                     # an explicit setting overrides
    assert over.judges['hard'].name == 'default/generator_hard' == load_judge('default/generator_hard').name


# ---------------------------------------------------------------- the whole stage against a local server

WORDS = [a + b for a in ('ka', 'lo', 'mi', 'nu', 'pe', 'ro', 'su', 'ti', 'va', 'ze') for b in ('ban', 'der', 'fox', 'gul', 'hem', 'jir', 'kop', 'lum', 'nax', 'pry')]
BEHAVIOURS = ('good', 'good_input', 'copy', 'empty', 'truncated', 'echo', 'punct', 'short', 'instruction_word', 'near_dup')


def example_of(body):
    text = last_user_text(body)
    return text.split('### Example instruction\n', 1)[1].split('\n\n### Example input', 1)[0]


def behaviour(body):
    return BEHAVIOURS[body['seed'] % len(BEHAVIOURS)]


def scripted_generator(body):
    "A generator that misbehaves in every way we filter, chosen by the request's sampling seed."
    b, ex = behaviour(body), example_of(body)
    fresh = ' '.join(random.Random(body['seed']).choices(WORDS, k=9))
    return {
        'good': f"### New instruction\nDescribe {fresh}.\n### New input\nnone",
        'good_input': f"New instruction: Summarise the passage about {fresh}.\nNew input: {fresh} {fresh}",
        'copy': f"### New instruction\n{ex}\n### New input\nnone",
        'empty': "",
        'truncated': (f"### New instruction\nExplain {fresh} and", 'length'),
        'echo': "### New instruction\n<the new instruction>\n### New input\n<its input, or none>",
        'punct': f"### New instruction\n...{fresh}",
        'short': "### New instruction\nDo it.",
        'instruction_word': f"### New instruction\nWrite step-by-step instructions for {fresh}.\n### New input\nnone",
        'near_dup': f"### New instruction\n{ex} Please.\n### New input\nnone",
    }[b]


def cfg_dict(base_url, n_new=10, **loop):
    m = {'backend': 'openai', 'model': 'gen-model', 'base_url': base_url, 'max_retries': 0, 'timeout_s': 10}
    return {'name': 'gen-test', 'seed': 3, 'models': {'G': m},
            'roles': {r: 'G' for r in ('teacher', 'student', 'referee', 'generator', 'judge')},
            'loop': {'n_new': n_new, **loop}, 'sampling': {'max_new_tokens': 64}}


def make_run(tmp_path, n_hard=4, n_easy=6):
    run = RunDir(tmp_path/'run')
    pool = [Instruction(id=f'c{i}', instruction=f'Explain how {WORDS[i]} relates to {WORDS[i + 40]} for a student.',
                        input='context' if i % 3 == 0 else '') for i in range(n_hard + n_easy + 2)]
    write_jsonl(run.pool(1, 'cache'), pool)
    disc = run.stage_dir(1, 'discrimination')
    rec = lambda p: {'id': p.id, 'instruction': p.instruction, 'input': p.input, 'hard': True, 'gap': 2.0}
    write_jsonl(disc/'hard.jsonl', [rec(p) for p in pool[:n_hard]])
    write_jsonl(disc/'easy.jsonl', [rec(p) for p in pool[n_hard:n_hard + n_easy]])
    return run, pool


def read_rows(path): return [json.loads(l) for l in open(path, encoding='utf-8')]


def test_whole_stage_against_scripted_server(tmp_path):
    run, pool = make_run(tmp_path)
    cache_sha = sha256_file(run.pool(1, 'cache'))
    with serve(scripted_generator) as srv:
        cfg = parse_config(cfg_dict(srv.base_url, n_new=10))
        s = run_generation(cfg, run, 1, progress=None)
        calls = srv.n_chat
        # every reply is accounted for, by its reason, and the reasons match what the server did
        rows = read_rows(run.stage_dir(1, 'generation')/'candidates.jsonl')
        assert s['requested'] == len(rows) == calls
        assert set(s['rejected']) <= set(REASONS)
        assert s['kept'] == 10 and s['shortfall'] == 0 and s['hard']['kept'] == 5 and s['easy']['kept'] == 5
        expected = {'copy': 'similar', 'near_dup': 'similar', 'empty': 'empty', 'truncated': 'truncated', 'echo': 'echo',
                    'punct': 'punctuation', 'short': 'too_short'}
        for r in rows:
            b = BEHAVIOURS[r['seed'] % len(BEHAVIOURS)]
            if b in expected: assert r['reason'] == expected[b] and not r['kept'], (b, r)
            else: assert r['kept'] or r['reason'] in ('surplus', 'similar'), (b, r)
        assert sum(s['rejected'].values()) + s['kept'] == s['requested']
        # the pools of iteration 2: Train = the new ones; Cache = Cache(1) + the new ones; Cache(1) untouched
        new = read_pool(run.pool(2, 'train'))
        assert [r.id for r in read_pool(run.pool(2, 'cache'))] == [p.id for p in pool] + [r.id for r in new]
        assert sha256_file(run.pool(1, 'cache')) == cache_sha
        assert any(r.input for r in new) and any('instructions for' in r.instruction for r in new)
        hard_ids, easy_ids = {p.id for p in pool[:4]}, {p.id for p in pool[4:10]}
        for r in new:
            assert r.prov.stage == 'generation' and r.prov.iteration == 1 and r.prov.model == 'gen-model' and r.source == 'generated'
            assert r.prov.parent_id in (hard_ids if r.prov.kind == 'hard' else easy_ids) and r.prov.seed is not None
        # the exact filter: every new one is below the threshold against Cache(1) and the new ones before it
        texts = [p.instruction for p in pool]
        for r in new:
            assert max(reference_rouge_l(t, r.instruction) for t in texts) < 0.7
            texts.append(r.instruction)
        assert run.is_done(1, 'generation') and (run.stage_dir(1, 'generation')/'nn_rouge.png').exists()
        # done: a second call sends nothing
        assert run_generation(cfg, run, 1, progress=None) == read_json(run.stage_dir(1, 'generation')/'summary.json')
        assert srv.n_chat == calls
        # interrupted before DONE: the rerun sends the same requests, all answered from the cache (an empty reply
        # that ended normally is a reply, cached like any other)
        run.done_file(1, 'generation').unlink()
        s2 = run_generation(cfg, run, 1, progress=None)
        assert s['rejected'].get('empty', 0) > 0 and srv.n_chat == calls
        assert [r.to_json() for r in read_pool(run.pool(2, 'train'))] == [r.to_json() for r in new]
        assert s2['kept'] == s['kept']


def test_seeded_and_ratio_follows_config(tmp_path):
    run, _ = make_run(tmp_path)
    with serve(scripted_generator) as srv:
        cfg = parse_config(cfg_dict(srv.base_url, n_new=8, hard_fraction=0.75))
        s = run_generation(cfg, run, 1, progress=None, plots=False)
        assert (s['hard']['kept'], s['easy']['kept']) == (6, 2)
        first = [r.to_json() for r in read_pool(run.pool(2, 'train'))]
    # another run folder, a fresh server (no cache): the same seeds give the same requests and the same result
    run2, _ = make_run(tmp_path/'again')
    with serve(scripted_generator) as srv:
        run_generation(parse_config(cfg_dict(srv.base_url, n_new=8, hard_fraction=0.75)), run2, 1, progress=None, plots=False)
        assert [r.to_json() for r in read_pool(run2.pool(2, 'train'))] == first


def test_referee_blind_control_draws_parents_from_the_whole_cache_pool(tmp_path):
    "seeds='random': no discrimination files needed; the same prompts and N; parents from anywhere in the Cache Pool."
    run, pool = make_run(tmp_path)
    for f in ('hard.jsonl', 'easy.jsonl'): (run.stage_dir(1, 'discrimination')/f).unlink()
    with serve(scripted_generator) as srv:
        cfg = parse_config(cfg_dict(srv.base_url, n_new=10))
        s = run_generation(cfg, run, 1, progress=None, plots=False, seeds='random')
    assert s['seed_source'] == 'random' and s['seeds'] == {'hard': len(pool), 'easy': len(pool)}
    assert s['kept'] == 10 and (s['hard']['kept'], s['easy']['kept']) == (5, 5)
    parents = {r.prov.parent_id for r in read_pool(run.pool(2, 'train'))}
    assert parents <= {p.id for p in pool} and parents - {p.id for p in pool[:10]}   # some outside the old split
    with pytest.raises(LionError, match="not 'both'"):
        run_generation(cfg, run, 1, progress=None, seeds='both')


def test_no_hard_instructions_means_all_easy(tmp_path):
    run, _ = make_run(tmp_path, n_hard=0, n_easy=5)
    with serve(scripted_generator) as srv:
        s = run_generation(parse_config(cfg_dict(srv.base_url, n_new=4)), run, 1, progress=None, plots=False)
    assert (s['hard']['target'], s['easy']['kept']) == (0, 4)


def test_missing_split_and_dead_generator_are_clear_errors(tmp_path):
    run, _ = make_run(tmp_path)
    (run.stage_dir(1, 'discrimination')/'easy.jsonl').unlink()
    with pytest.raises(InputError, match='easy.jsonl: file not found'):
        run_generation(parse_config(cfg_dict('http://127.0.0.1:9/v1')), run, 1, progress=None)
    run, _ = make_run(tmp_path/'b')
    (run.stage_dir(1, 'discrimination')/'hard.jsonl').write_text('{"id": "x", "instruction": "ok"}\n{"id": "y"}\n')
    with pytest.raises(InputError, match=r"hard.jsonl:2: field 'instruction'"):
        run_generation(parse_config(cfg_dict('http://127.0.0.1:9/v1')), run, 1, progress=None)
    run, _ = make_run(tmp_path/'c')
    with serve(scripted_generator, fault_rate={'500': 1.0}) as srv:
        with pytest.raises(LionError, match='all .* generation requests of round 1 failed'):
            run_generation(parse_config(cfg_dict(srv.base_url)), run, 1, progress=None)
    assert not run.pool(2, 'train').exists() and not run.is_done(1, 'generation')


def test_nothing_kept_writes_no_pools(tmp_path):
    run, _ = make_run(tmp_path)
    with serve(lambda body: f"### New instruction\n{example_of(body)}\n### New input\nnone") as srv:   # only copies
        with pytest.raises(LionError, match='no generated instruction survived'):
            run_generation(parse_config(cfg_dict(srv.base_url, n_new=2)), run, 1, progress=None)
        assert srv.n_chat > 0
    assert (run.stage_dir(1, 'generation')/'candidates.jsonl').exists() and not run.pool(2, 'cache').exists()


def test_cli_dry_run_and_run(tmp_path, capsys):
    run, _ = make_run(tmp_path)
    with serve(scripted_generator) as srv:
        cfgf = tmp_path/'cfg.yaml'; cfgf.write_text(yaml.safe_dump(cfg_dict(srv.base_url, n_new=4)))
        assert generate_cli(['--config', str(cfgf), '--run-dir', str(run.root), '--dry-run']) == 0
        est = capsys.readouterr().out
        assert srv.n_chat == 0 and "'calls': 6" in est             # 2 + 2 wanted, 1.3x oversampled: 3 + 3
        from lion_nb.cli import main
        assert main(['generate', '--config', str(cfgf), '--run-dir', str(run.root)]) == 0
        out = capsys.readouterr().out
        assert 'kept 4 of the 4 wanted' in out and 'pools of iteration 2: Train 4' in out


def test_notebook_under_papermill(tmp_path):
    import papermill as pm
    run, pool = make_run(tmp_path)
    with serve(scripted_generator) as srv:
        cfgf = tmp_path/'cfg.yaml'; cfgf.write_text(yaml.safe_dump(cfg_dict(srv.base_url, n_new=6)))
        out = tmp_path/'gen_out.ipynb'
        pm.execute_notebook(str(ROOT/'nbs'/'05_generation.ipynb'), str(out), cwd=str(ROOT/'nbs'), progress_bar=False,
                            kernel_name='python3', language='python',
                            parameters={'run_dir': str(run.root), 'iteration': 1, 'config': str(cfgf)})
    assert run.is_done(1, 'generation') and len(read_pool(run.pool(2, 'train'))) == 6
    assert len(read_pool(run.pool(2, 'cache'))) == len(pool) + 6
    text = out.read_text()
    assert 'From hard instructions' in text and 'image/png' in text and 'rejected, by reason' in text
