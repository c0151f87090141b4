"""Chat templates render exactly as transformers' apply_chat_template does."""
import json
import shutil
from pathlib import Path

import pytest

from rustinfer.runtime.chat_template import ChatTemplateError
from rustinfer.runtime.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there 🤗"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b\n"}, {"role": "user", "content": "中文 ünïcode\n\n"}],
]

# A template exercising what real ones use: named templates, tools through
# tojson (indent, non-ASCII), namespace, loop controls, raise_exception,
# strftime_now, `is defined` on special tokens, documents, {% generation %}.
TOOL_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system='', n=0) %}
{%- if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}{% endif %}
<|start_header_id|>system<|end_header_id|>

Today: {{ strftime_now('%Y-%m-%d') | length }} chars{{ ' pad=' + pad_token if pad_token is defined }}
{%- if tools is not none %}
Tools:
{% for t in tools %}{{ t | tojson(indent=2) }}
{% endfor %}
{%- endif %}
{%- if documents is not none %}{% for d in documents %}[{{ d.title }}] {% endfor %}{% endif %}
{{ ns.system }}<|eot_id|>
{%- for m in messages %}
  {%- if m['role'] == 'system' %}{% continue %}{% endif %}
  {%- if m['role'] not in ['user', 'assistant', 'tool'] %}{{ raise_exception('bad role: ' + m['role']) }}{% endif %}
  {%- set ns.n = ns.n + 1 %}
<|start_header_id|>{{ m['role'] }}<|end_header_id|>

  {%- if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | default('') }}{% endgeneration %}
  {%- else %}{{ m['content'] | trim }}{% endif %}
  {%- if m.tool_calls is defined %}{{ m.tool_calls | tojson }}{% endif %}
  {%- if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}</think>{% endif %}
<|eot_id|>
  {%- if ns.n > 50 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}
{%- if custom_flag is defined %}[flag={{ custom_flag }}]{% endif %}"""

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Météo à <ville> & \"temps\"",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def llama(llama_dir):
    return Tokenizer.from_hf_dir(llama_dir), transformers.AutoTokenizer.from_pretrained(llama_dir)


def _checkpoint_copy(src: Path, dst: Path, **config_changes) -> Path:
    """A copy of a checkpoint's tokenizer files with tokenizer_config.json edited."""
    dst.mkdir()
    for name in ("tokenizer.json", "generation_config.json", "config.json"):
        shutil.copy(src / name, dst / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def tools_pair(llama_dir, tmp_path_factory):
    """Named templates (a list in tokenizer_config) and special tokens given as AddedToken dicts."""
    plain = "{{ bos_token }}PLAIN{% for m in messages %}|{{ m['content'] }}{% endfor %}"
    path = _checkpoint_copy(
        llama_dir, tmp_path_factory.mktemp("tools") / "ckpt",
        chat_template=[{"name": "default", "template": plain}, {"name": "tool_use", "template": TOOL_TEMPLATE}],
        pad_token={"__type": "AddedToken", "content": "<|finetune_right_pad_id|>", "lstrip": False,
                   "normalized": False, "rstrip": False, "single_word": False, "special": True})
    return Tokenizer.from_hf_dir(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("agp", [True, False])
def test_checkpoint_template_matches_transformers(llama, conv, agp):
    ours, hf = llama
    msgs = CONVERSATIONS[conv]
    assert ours.apply_chat_template(msgs, add_generation_prompt=agp) == \
        hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
    assert ours.encode_chat(msgs, add_generation_prompt=agp) == \
        hf.apply_chat_template(msgs, add_generation_prompt=agp, return_dict=False)


def test_continue_final_message_matches_transformers(llama):
    ours, hf = llama
    msgs = CONVERSATIONS[0] + [{"role": "assistant", "content": "The answer is"}]
    kw = dict(add_generation_prompt=False, continue_final_message=True)
    assert ours.apply_chat_template(msgs, **kw) == hf.apply_chat_template(msgs, tokenize=False, **kw)


@pytest.mark.parametrize("with_tools", [True, False])
def test_named_templates_tools_and_kwargs_match_transformers(tools_pair, with_tools):
    ours, hf = tools_pair
    tools = TOOLS if with_tools else None
    msgs = CONVERSATIONS[2] + [
        {"role": "assistant", "content": None, "reasoning_content": "hmm",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "content": "sunny"}]
    for kwargs in ({}, {"custom_flag": "on", "documents": [{"title": "Doc", "text": "t"}]}):
        for agp in (True, False):
            expected = hf.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=agp, **kwargs)
            assert ours.apply_chat_template(msgs, add_generation_prompt=agp, tools=tools, **kwargs) == expected
    if with_tools:  # the tool_use template was chosen, with its JSON unescaped
        assert "Météo à <ville> & \\\"temps\\\"" in expected and "pad=<|finetune_right_pad_id|>" in expected
    else:
        assert "PLAIN" in expected


def test_raise_exception_is_a_clear_error(tools_pair):
    ours, hf = tools_pair
    msgs = [{"role": "narrator", "content": "x"}]
    with pytest.raises(jinja2.TemplateError, match="bad role: narrator"):
        hf.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    with pytest.raises(ChatTemplateError, match="bad role: narrator"):
        ours.apply_chat_template(msgs, tools=TOOLS)
    with pytest.raises(ValueError):  # a server can map it to HTTP 400
        ours.apply_chat_template(msgs, tools=TOOLS)


def test_template_is_sandboxed(llama):
    ours, _ = llama
    ours = Tokenizer(ours.backend, bos_token_id=None, eos_token_ids=[],
                     chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        ours.apply_chat_template([{"role": "user", "content": "x"}])


def test_builtin_llama3_template_when_checkpoint_has_none(llama_dir, llama, tmp_path):
    """No template in the checkpoint: the built-in one gives the standard Llama 3
    format, which is what this checkpoint's own template writes."""
    _, hf = llama
    bare = Tokenizer.from_hf_dir(_checkpoint_copy(llama_dir, tmp_path / "bare", chat_template=None))
    assert bare.chat_template is None
    for msgs in CONVERSATIONS:
        for agp in (True, False):
            assert bare.apply_chat_template(msgs, add_generation_prompt=agp) == \
                hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)


def test_chat_template_jinja_file_wins(llama_dir, tmp_path):
    path = _checkpoint_copy(llama_dir, tmp_path / "jinja")
    (path / "chat_template.jinja").write_text("FILE{{ messages[0]['content'] }}")
    ours, hf = Tokenizer.from_hf_dir(path), transformers.AutoTokenizer.from_pretrained(path)
    msgs = [{"role": "user", "content": "x"}]
    assert ours.apply_chat_template(msgs) == hf.apply_chat_template(msgs, tokenize=False) == "FILEx"


def test_messages_are_not_modified(llama):
    ours, _ = llama
    msgs = [{"role": "user", "content": "x", "tool_calls": None}]
    ours.apply_chat_template(msgs)
    assert msgs == [{"role": "user", "content": "x", "tool_calls": None}]


def test_no_template_and_not_a_llama3_vocabulary_is_refused():
    """Without a template the Llama 3 format is used only where its header tokens exist;
    elsewhere it is a ValueError (a server's 400) that says what to do."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    from rustinfer.runtime.chat_template import NoChatTemplateError

    backend = Backend(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    bare = Tokenizer(backend, bos_token_id=None, eos_token_ids=[])
    with pytest.raises(NoChatTemplateError, match="no chat template.*generate --raw"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError):
        bare.encode_chat([{"role": "user", "content": "hi"}])
    templated = Tokenizer(backend, bos_token_id=None, eos_token_ids=[],
                          chat_template="{{ messages[0]['content'] }}")
    assert templated.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"
