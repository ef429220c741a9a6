// Syntax highlighting with a small build of highlight.js 11.12.0 (BSD-3-Clause, vendored
// from @highlightjs/cdn-assets: the core and the languages generated projects use).

import hljs from "./vendor/highlight/core.min.js";
import bash from "./vendor/highlight/languages/bash.min.js";
import diff from "./vendor/highlight/languages/diff.min.js";
import dockerfile from "./vendor/highlight/languages/dockerfile.min.js";
import ini from "./vendor/highlight/languages/ini.min.js";
import json from "./vendor/highlight/languages/json.min.js";
import markdown from "./vendor/highlight/languages/markdown.min.js";
import plaintext from "./vendor/highlight/languages/plaintext.min.js";
import python from "./vendor/highlight/languages/python.min.js";
import sql from "./vendor/highlight/languages/sql.min.js";
import xml from "./vendor/highlight/languages/xml.min.js";
import yaml from "./vendor/highlight/languages/yaml.min.js";

const LANGUAGES = { bash, diff, dockerfile, ini, json, markdown, plaintext, python, sql, xml, yaml };
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);

const BY_EXTENSION = {
  py: "python",
  pyi: "python",
  json: "json",
  yml: "yaml",
  yaml: "yaml",
  md: "markdown",
  toml: "ini",
  ini: "ini",
  cfg: "ini",
  sh: "bash",
  html: "xml",
  xml: "xml",
  sql: "sql",
  diff: "diff",
  patch: "diff",
};
const MAX_HIGHLIGHT_CHARS = 200_000;

export function languageOf(path) {
  const name = path.split("/").pop();
  if (/^Dockerfile/.test(name)) return "dockerfile";
  if (name === "Makefile" || name.startsWith(".env")) return "bash";
  const extension = name.includes(".") ? name.split(".").pop().toLowerCase() : "";
  return BY_EXTENSION[extension] || "plaintext";
}

// Fill a <code> element with highlighted text (plain text when very large).
export function highlightInto(code, path, text) {
  const language = languageOf(path);
  code.className = `hljs language-${language}`;
  if (text.length > MAX_HIGHLIGHT_CHARS || language === "plaintext") {
    code.textContent = text;
    return;
  }
  code.innerHTML = hljs.highlight(text, { language, ignoreIllegals: true }).value;
}
