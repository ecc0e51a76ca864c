// The answer page, streamed: the form's question goes to /answer/stream (server-sent events:
// sources, delta..., done or error) and the answer is written in as it comes. Every text is
// set as text (textContent), never parsed as HTML. Each question gets its own URL in the
// history; back and forward put that URL's question in the form and stream its answer again.
// Without this script the form loads /answer, which the server renders whole.
"use strict";

(function () {
  const form = document.getElementById("ask");
  const target = document.getElementById("answer");
  if (!form || !target || !window.EventSource) {
    return;
  }
  let stream = null;

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, value);
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function problem(title, detail) {
    const box = element("div", { class: "problem", role: "alert" });
    box.append(element("h2", {}, title), element("p", {}, detail));
    target.replaceChildren(box);
  }

  // The answer's text with each [n] of a listed source made a link to it.
  function withCitations(text, count) {
    const out = document.createDocumentFragment();
    let last = 0;
    for (const found of text.matchAll(/\[(\d{1,3})\]/g)) {
      const number = Number(found[1]);
      if (number < 1 || number > count) {
        continue;
      }
      out.append(text.slice(last, found.index));
      out.append(element("a", { href: "#source-" + number, class: "cite" }, found[0]));
      last = found.index + found[0].length;
    }
    out.append(text.slice(last));
    return out;
  }

  function feedback(searchId) {
    const thanks = element("form", { method: "post", action: "/answer/feedback", class: "feedback" });
    const hidden = (name, value) => element("input", { type: "hidden", name: name, value: value });
    thanks.append(
      hidden(target.dataset.csrfField, target.dataset.csrfToken),
      hidden("search_id", searchId),
      element("span", {}, "Was this helpful? "),
      element("button", { type: "submit", name: "kind", value: "thumbs_up" }, "Helpful"),
      element("button", { type: "submit", name: "kind", value: "thumbs_down" }, "Not helpful"),
    );
    thanks.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = new URLSearchParams(new FormData(thanks, event.submitter));
      const sent = await fetch("/answer/feedback", { method: "POST", body: body });
      thanks.replaceWith(element("p", { class: "feedback", role: "status" },
        sent.ok ? "Thanks: noted." : "Your feedback could not be recorded."));
    });
    return thanks;
  }

  function ask(params) {
    if (stream) {
      stream.close();
    }
    const heading = element("h2", {}, "Answer");
    const note = element("p", { class: "note", hidden: "" });
    const text = element("div", { class: "answer-text" });
    const meta = element("p", { class: "meta" });
    const sources = element("ol", { class: "sources" });
    target.replaceChildren(heading, note, text, meta, element("h2", {}, "Sources"), sources);
    let written = "";
    let count = 0;
    let searchId = "";
    const current = new EventSource("/answer/stream?" + params);
    stream = current;
    current.addEventListener("sources", (message) => {
      const data = JSON.parse(message.data);
      searchId = data.search_id;
      count = data.sources.length;
      for (const source of data.sources) {
        const item = element("li", { id: "source-" + source.number });
        item.append(element("strong", {}, source.title || source.document_id));
        if (source.heading_path.length) {
          item.append(" ", element("span", { class: "path" }, source.heading_path.join(" › ")));
        }
        item.append(element("p", {}, source.text));
        sources.append(item);
      }
    });
    current.addEventListener("delta", (message) => {
      written += JSON.parse(message.data).text;
      text.textContent = written;
    });
    current.addEventListener("done", (message) => {
      const data = JSON.parse(message.data);
      current.close();
      text.replaceChildren(withCitations(written, count));
      for (const number of data.cited) {
        const cited = document.getElementById("source-" + number);
        if (cited) {
          cited.classList.add("cited");
        }
      }
      if (data.extractive) {
        note.textContent = "Extractive answer: the passages most relevant to the question, quoted (no chat model answered).";
        note.hidden = false;
      }
      meta.textContent = (data.model || "extractive") + " · " +
        Object.entries(data.timings_ms).map(([stage, ms]) => stage + " " + Math.round(ms) + " ms").join(" · ");
      meta.after(feedback(searchId));
    });
    current.addEventListener("error", (message) => {
      current.close();
      if (message.data) {
        const data = JSON.parse(message.data);
        problem(data.title, data.detail);
      } else if (!written) {
        problem("No answer", "The answer could not be streamed; try again, or reload the page.");
      }
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams(new FormData(form));
    history.pushState(null, "", "/answer?" + params);
    ask(params);
  });

  // Back or forward to another question's URL: that question, asked again; to the page
  // without one: an empty form.
  window.addEventListener("popstate", () => {
    const params = new URLSearchParams(window.location.search);
    const question = params.get("q") || "";
    form.elements.q.value = question;
    const collection = form.elements.collection;
    if ([...collection.options].some((option) => option.value === params.get("collection"))) {
      collection.value = params.get("collection");
    }
    if (question) {
      ask(new URLSearchParams(new FormData(form)));
    } else {
      if (stream) {
        stream.close();
      }
      target.replaceChildren();
    }
  });
})();
