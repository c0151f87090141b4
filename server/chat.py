"""POST /v1/chat/completions: messages through the checkpoint's chat template,
answers as message content or tool_calls, streamed or not.

Streaming follows OpenAI chunk for chunk: a role chunk per choice
(`{"role": "assistant", "content": ""}`), content deltas, then one chunk with
an empty delta and the finish_reason, per choice; `usage` on a last chunk with
no choices when stream_options.include_usage; `data: [DONE]`. With tools on,
a choice's output is held back until its first characters say whether it is a
tool call: content is then streamed as usual, a call is sent as tool_calls
when complete (its arguments must parse as a whole).

A forced call (tool_choice "required" or named) is started in the prompt
(tools.py): the chosen start's tokens become the end of the prompt, and its
text the start of the answer. A choice whose calls are complete ends there
(finish_reason "tool_calls"); the engine request is aborted once every choice
has ended, instead of generating whatever the model would write after a call.
"""
from __future__ import annotations

import time
import uuid

from starlette.requests import Request

from rustinfer.runtime.chat_template import ChatTemplateError, NoChatTemplateError

from . import sse, tools
from .completions import engine_failure, respond
from .engine_client import EngineDead
from .errors import OpenAIError, invalid
from .middleware import read_body
from .logprobs import chat_logprobs
from .openai_types import (ChatCompletionRequest, build_params, check_chat_request, context_error,
                           parse_body, pick_params)
from .state import ServerState, encode_many


def render_chat(tokenizer, req: ChatCompletionRequest) -> str:
    """The prompt text for the conversation (runs on the tokenization pool)."""
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    use_tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    if req.tool_choice == "none":
        use_tools = []
    messages, template_tools = tools.prepare_messages(messages, use_tools, tokenizer.chat_template)
    kwargs = dict(req.chat_template_kwargs or {})
    if req.continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
            tools=template_tools, **kwargs)
    except NoChatTemplateError as e:
        raise invalid(str(e), "messages") from None
    except ChatTemplateError as e:
        raise invalid(f"the chat template refused these messages: {e}", "messages") from None
    except (TypeError, KeyError) as e:
        raise invalid(f"the messages do not fit the chat template: {e}", "messages") from None


def render_prompts(tokenizer, req: ChatCompletionRequest, starts: list[str]) -> list[list[int]]:
    """Prompt token ids, one list per possible start of the answer."""
    text = render_chat(tokenizer, req)
    # No special tokens added: the template already wrote BOS (as encode_chat does).
    return encode_many(tokenizer, [text + s for s in starts], add_special_tokens=False)


async def create_chat_completion(state: ServerState, request: Request):
    req = parse_body(await read_body(request), ChatCompletionRequest)
    state.check_model(req.model)
    state.require_ready()
    check_chat_request(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    fmt = (req.response_format or {}).get("type", "text")
    tool_list = [t.model_dump(exclude_none=True) for t in req.tools or []]
    if fmt != "text" and tool_list and req.tool_choice != "none":
        raise invalid(f"response_format {fmt} cannot be combined with tools: send one or the "
                      "other (or tool_choice: \"none\")", "response_format")
    if fmt != "text" and req.continue_final_message:
        raise invalid(f"response_format {fmt} cannot continue the final assistant message "
                      "(continue_final_message): the answer would be a whole JSON value of its "
                      "own, after that message's text", "response_format")
    if req.tool_choice not in (None, "none", "auto") and not tool_list:
        raise invalid("tool_choice needs tools", "tool_choice")
    tools.check_tools(tool_list)
    forced = tools.forced_names(tool_list, req.tool_choice)
    starts = tools.call_starts(tool_list, forced) if forced else [(None, "")]
    slot = state.admit()
    streams = []
    try:
        run_id = f"chatcmpl-{uuid.uuid4().hex}"
        prompts = await state.run_blocking(render_prompts, state.tokenizer, req,
                                           [text for _, text in starts])
        limit = state.max_model_len
        longest = max(len(p) for p in prompts)
        if longest >= limit:
            raise context_error(longest, limit, "messages")
        k = 0 if len(prompts) == 1 else await _pick(state, req, run_id, prompts)
        ids, (forced_name, prefix) = prompts[k], starts[k]
        wanted = req.max_completion_tokens or req.max_tokens or limit
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = build_params(req, max_tokens=max(1, min(wanted, limit - len(ids))),
                              vocab_size=state.vocab_size, logprobs=logprobs,
                              response_format=req.response_format)
        tools_on = bool(tool_list) and req.tool_choice != "none"
        declared = {t["function"]["name"]: t["function"].get("parameters") for t in tool_list}
        one_call = isinstance(req.tool_choice, dict) or not req.parallel_tool_calls
        run = _Chat(state, req, run_id, len(ids), prefix, tools_on, declared,
                    max_calls=1 if one_call else None, forced_name=forced_name)
        streams = await state.submit(run.id, [ids], params)
    except BaseException:
        state.abort_soon(streams)
        slot.release()
        raise
    return await respond(state, request, req.stream, run, streams, slot)


async def _pick(state: ServerState, req: ChatCompletionRequest, run_id: str,
                prompts: list[list[int]]) -> int:
    """Which forced start the model chooses (tools.pick_start), one engine request per
    token it has to decide. One choice for all n choices of the request."""
    steps = 0

    async def sample(prefix_ids: list[int], allowed: set[int]) -> int:
        nonlocal steps
        steps += 1
        streams = await state.submit(f"{run_id}-pick{steps}", [prefix_ids],
                                     pick_params(req, allowed))
        got: list[int] = []
        try:
            async for _, ev in state.merged(streams):
                if ev["finished"] and ev.get("finish_reason") in ("error", "abort"):
                    raise engine_failure(ev)
                got += ev.get("new_token_ids", [])
        except EngineDead as e:
            raise engine_failure(None, e) from None
        finally:
            state.abort_soon(streams)
        if not got:
            raise OpenAIError(500, "choosing the tool call: the engine returned no token",
                              code="engine_error")
        return got[0]

    try:
        return await tools.pick_start(prompts, sample)
    except RuntimeError as e:
        raise OpenAIError(500, f"choosing the tool call: {e}", code="engine_error") from None


class _Choice:
    def __init__(self, prefix: str, tools_on: bool):
        self.text = prefix            # all output so far (the forced prefix included)
        self.unsent = prefix          # held back while tools_on and undecided / a call
        self.unsent_lps: list = []
        self.mode = "content" if not tools_on else ("tool" if prefix else None)
        self.generated = 0
        self.finish = None            # set once the choice has ended (here or in the engine)
        self.stop_reason = None
        self.calls = None
        self.lps: list = []
        self.sent_finish = False


class _Chat:
    def __init__(self, state: ServerState, req: ChatCompletionRequest, run_id: str,
                 prompt_len: int, prefix: str, tools_on: bool, declared: dict[str, dict],
                 max_calls: int | None, forced_name: str | None = None):
        self.state, self.req, self.prompt_len = state, req, prompt_len
        self.id = run_id
        self.created = int(time.time())
        self.top_n = req.top_logprobs or 0
        self.declared, self.max_calls = declared, max_calls
        self.forced_name = forced_name     # the function the prompt started a call to
        self.choices = {i: _Choice(prefix, tools_on) for i in range(req.n)}

    @property
    def all_done(self) -> bool:
        return all(c.finish is not None for c in self.choices.values())

    def skip(self, ev: dict) -> bool:
        """An event for a choice that has already ended here (its call was complete)."""
        return self.choices[ev["index"]].finish is not None

    def _apply(self, ev: dict) -> tuple[int, str, list]:
        """Fold one event in; returns (index, content to send now, logprob entries to send)."""
        c = self.choices[ev["index"]]
        delta = ev.get("new_text", "")
        c.generated += len(ev.get("new_token_ids", []))
        lps = chat_logprobs(self.state.token_text, ev.get("logprobs") or [], self.top_n) \
            if self.req.logprobs else []
        c.text += delta
        c.lps += lps
        if c.mode is None:
            decided = tools.looks_like_call(c.text)
            if decided is not None:
                c.mode = "tool" if decided else "content"
        calls, scanned = [], None
        if c.mode == "tool":
            closed = None if self.forced_name is None else \
                tools.close_forced_call(c.text, self.declared[self.forced_name])
            calls, scanned = tools.scan_calls(closed or c.text, self.declared, self.max_calls)
            if closed is not None and calls:
                scanned = tools.DONE          # the model left the call's shape: it ends here
            if scanned == tools.NOT_A_CALL:   # not a call after all: it is content
                c.mode = "content"
        if c.mode == "content":
            out, out_lps = c.unsent + delta, c.unsent_lps + lps
            c.unsent, c.unsent_lps = "", []
        else:
            c.unsent += delta
            c.unsent_lps += lps
            out, out_lps = "", []
        if c.mode == "tool" and (ev["finished"] or scanned == tools.DONE):
            if calls:
                # Complete calls (and nothing more to come): the answer ends here.
                c.calls = tools.openai_calls(calls)
                c.finish, c.stop_reason = "tool_calls", None
                self.state.metrics.finished(ev.get("finish_reason") if ev["finished"] else "stop")
                c.unsent, c.unsent_lps = "", []
                return ev["index"], out, out_lps
            # A call cut short or malformed: what there is, as content.
            out, out_lps = c.unsent, c.unsent_lps
            c.unsent, c.unsent_lps = "", []
        if ev["finished"]:
            c.finish, c.stop_reason = ev.get("finish_reason"), ev.get("stop_reason")
            self.state.metrics.finished(c.finish)
        return ev["index"], out, out_lps

    def _usage(self) -> dict:
        done = sum(c.generated for c in self.choices.values())
        return {"prompt_tokens": self.prompt_len, "completion_tokens": done,
                "total_tokens": self.prompt_len + done}

    def _head(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.state.model_name}

    async def collect(self, streams) -> dict:
        try:
            async for _, ev in self.state.merged(streams):
                if self.skip(ev):
                    continue
                if ev["finished"] and ev.get("finish_reason") in ("error", "abort"):
                    raise engine_failure(ev)
                self._apply(ev)
                if self.all_done:
                    break   # respond() aborts what the engine still runs
        except EngineDead as e:
            raise engine_failure(None, e) from None
        choices = []
        for i, c in sorted(self.choices.items()):
            message = {"role": "assistant", "content": None if c.calls else c.text}
            if c.calls:
                message["tool_calls"] = c.calls
            choices.append({"index": i, "message": message,
                            "logprobs": {"content": c.lps} if self.req.logprobs else None,
                            "finish_reason": c.finish, "stop_reason": c.stop_reason})
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.state.model_name, "choices": choices, "usage": self._usage()}

    async def stream(self, streams):
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}

        def chunk(i, delta, logprobs=None, finish=None):
            return sse.event({**self._head(), "choices": [{
                "index": i, "delta": delta,
                "logprobs": {"content": logprobs} if logprobs else None,
                "finish_reason": finish}], **extra})

        for i in self.choices:
            yield chunk(i, {"role": "assistant", "content": ""})
        try:
            async for _, ev in self.state.merged(streams):
                if self.skip(ev):
                    continue
                if ev["finished"] and ev.get("finish_reason") in ("error", "abort"):
                    yield sse.event(engine_failure(ev).body())
                    yield sse.DONE
                    return
                i, text, lps = self._apply(ev)
                if text or lps:
                    yield chunk(i, {"content": text}, lps)
                c = self.choices[i]
                if c.finish is not None and not c.sent_finish:
                    c.sent_finish = True
                    for j, call in enumerate(c.calls or []):
                        yield chunk(i, {"tool_calls": [{
                            "index": j, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}]})
                        yield chunk(i, {"tool_calls": [{
                            "index": j, "function": {"arguments": call["function"]["arguments"]}}]})
                    yield chunk(i, {}, finish=c.finish)
                if self.all_done:
                    break   # the response's cleanup aborts what the engine still runs
        except EngineDead as e:
            yield sse.event(engine_failure(None, e).body())
            yield sse.DONE
            return
        if include_usage:
            yield sse.event({**self._head(), "choices": [], "usage": self._usage()})
        yield sse.DONE
