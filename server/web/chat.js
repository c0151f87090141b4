// The chat page: plain JavaScript, no build step. It speaks the same OpenAI API
// as any client: GET /v1/models for the name, POST /v1/chat/completions with
// stream: true, reading Server-Sent Events off the fetch body. Stop aborts the
// fetch; the server sees the disconnect and frees the request's KV cache.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // {role, content} of the conversation so far
let controller = null;       // AbortController of the answer being streamed
let modelName = null;
let epoch = 0;               // bumped by Clear: an answer still streaming then is not kept

for (const id of ["temperature", "top_p"]) {
  const input = $(id), out = $(id + "-value");
  input.addEventListener("input", () => { out.textContent = input.value; });
}
$("api_key").value = localStorage.getItem("rustinfer_api_key") || "";
$("api_key").addEventListener("change", () => {
  localStorage.setItem("rustinfer_api_key", $("api_key").value);
  loadModel();
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    modelName = body.data[0].id;
    $("model").textContent = modelName;
    $("status").textContent = "ready";
  } catch (e) {
    $("model").textContent = "unavailable";
    $("status").textContent = String(e.message || e);
    setTimeout(loadModel, 3000);   // the engine may still be loading
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("chat").appendChild(div);
  $("chat").scrollTop = $("chat").scrollHeight;
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "generating…" : "ready";
}

function samplingParams() {
  const p = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10) || 256,
  };
  const topK = parseInt($("top_k").value, 10);
  if (topK > 0) p.top_k = topK;
  const seed = $("seed").value.trim();
  if (seed !== "") p.seed = parseInt(seed, 10);
  return p;
}

// Yields the JSON payload of each `data:` event until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  const mine = epoch;
  const turn = { role: "user", content: text };
  history.push(turn);
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.dataset.state = "streaming";
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  controller = new AbortController();
  setBusy(true);
  let answer = "", finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: modelName, messages, stream: true, ...samplingParams() }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : r.statusText);
    }
    for await (const chunk of sseEvents(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          bubble.textContent = answer;
          $("chat").scrollTop = $("chat").scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    bubble.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
      bubble.dataset.state = "stopped";
    } else {
      bubble.classList.add("error");
      bubble.textContent = answer + (answer ? "\n" : "") + "Error: " + (e.message || e);
      bubble.dataset.state = "error";
    }
  } finally {
    controller = null;
    setBusy(false);
  }
  if (mine !== epoch) {
    // cleared meanwhile: this turn is no longer part of the conversation
  } else if (answer) {
    history.push({ role: "assistant", content: answer });
  } else if (history[history.length - 1] === turn) {
    // No answer (refused, failed, or stopped before the first token): drop the turn, or
    // every later request would resend it (a too-long message would fail them all).
    history.pop();
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = finish ? "finish: " + finish : "";
  bubble.appendChild(meta);
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  epoch += 1;
  if (controller) controller.abort();
  history.length = 0;
  $("chat").innerHTML = "";
});

loadModel();
