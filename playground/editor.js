// The playground's editor: CodeMirror 6 with a language pack per Ignis
// language. scripts/playground-bundle bundles this file into
// crates/server/assets/playground/editor.js, which the page loads; it
// exposes `window.IgnisEditor`.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { Compartment, Prec } from "@codemirror/state";
import { indentWithTab } from "@codemirror/commands";
import { python } from "@codemirror/lang-python";
import { go } from "@codemirror/lang-go";
import { javascript } from "@codemirror/lang-javascript";
import { cpp } from "@codemirror/lang-cpp";
import { java } from "@codemirror/lang-java";
import { rust } from "@codemirror/lang-rust";
import { php } from "@codemirror/lang-php";

// By Ignis language name (or its first word: "python3" finds python).
const packs = {
  python: () => python(),
  go: () => go(),
  javascript: () => javascript(),
  node: () => javascript(),
  typescript: () => javascript({ typescript: true }),
  c: () => cpp(),
  cpp: () => cpp(),
  "c++": () => cpp(),
  java: () => java(),
  rust: () => rust(),
  php: () => php(),
};

function pack(name) {
  const key = String(name || "").toLowerCase();
  const hit = packs[key] || packs[key.replace(/[^a-z+]+.*$/, "")];
  return hit ? hit() : [];
}

// Makes an editor in `parent`. `onRun` is called on Ctrl/Cmd+Enter.
function create(parent, { doc = "", language = "", onRun = () => {} } = {}) {
  const lang = new Compartment();
  const run = () => {
    onRun();
    return true;
  };
  const view = new EditorView({
    doc,
    parent,
    extensions: [
      basicSetup,
      keymap.of([indentWithTab]),
      Prec.highest(keymap.of([{ key: "Mod-Enter", run }])),
      lang.of(pack(language)),
      EditorView.lineWrapping,
    ],
  });
  return {
    view,
    getCode: () => view.state.doc.toString(),
    setCode: (text) =>
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } }),
    setLanguage: (name) => view.dispatch({ effects: lang.reconfigure(pack(name)) }),
    focus: () => view.focus(),
  };
}

window.IgnisEditor = { create, languages: Object.keys(packs) };
