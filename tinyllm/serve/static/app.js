// The chat page: send the prompt to /v1/completions with stream: true, show the text as the
// server-sent events arrive, abort the request on Stop (the server then stops generating).
"use strict";

const $ = (id) => document.getElementById(id);
let modelId = null;
let controller = null;

function headers() {
  const key = $("api-key").value.trim();
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  const card = (await response.json()).data[0];
  modelId = card.id;
  $("model-name").textContent = card.id;
  $("model-loss").textContent = card.val_loss == null ? "n/a" : card.val_loss.toFixed(4);
  $("model-context").textContent = card.context_length;
  document.title = "tinyllm · " + card.id;
  setStatus("");  // a refusal shown before (e.g. a wrong API key) no longer holds
}

function numberOf(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function request(prompt) {
  const body = {
    model: modelId, prompt: prompt, stream: true,
    temperature: numberOf("temperature"), top_k: numberOf("top-k"),
    top_p: numberOf("top-p"), max_tokens: numberOf("max-tokens"),
  };
  const seed = numberOf("seed");
  if (seed !== null) body.seed = seed;
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}

// Yields the JSON payload of each `data:` event of a server-sent event stream.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function generate() {
  if (controller) return;
  if (!modelId) await loadModel();
  if (!modelId) return;
  const prompt = $("prompt").value;
  $("output-prompt").textContent = prompt;
  $("output-text").textContent = "";
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  let characters = 0;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request(prompt)),
      signal: controller.signal,
    });
    if (!response.ok) {
      setStatus(await errorMessage(response), true);
      return;
    }
    let finish = null;
    let note = "";
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.dropped_characters) {
        note = " · dropped unknown characters: " + chunk.dropped_characters.join(" ");
      }
      const choice = chunk.choices[0];
      if (!choice) continue;
      $("output-text").textContent += choice.text;
      characters += choice.text.length;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    const seconds = (performance.now() - started) / 1000;
    const why = finish === "stop" ? "stop text" : "max tokens";
    setStatus(`${characters} characters in ${seconds.toFixed(1)} s (${why})${note}`);
  } catch (e) {
    if (e.name === "AbortError") setStatus(`stopped after ${characters} characters`);
    else setStatus(String(e.message || e), true);
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("api-key").addEventListener("change", () => { modelId = null; loadModel(); });
loadModel();
