// The smaller pages: sign in, create a project, the projects list.

import { api, clearKey, newIdempotencyKey, setKey } from "./api.js";
import { findJsonError } from "./jsoncheck.js";
import { el, mountTemplate, renderVersions, show, showError } from "./views.js";

export const EXAMPLE_SCHEMA = {
  entities: [
    {
      name: "Category",
      fields: [
        { name: "name", type: "string", required: true },
        { name: "description", type: "text", required: false },
      ],
    },
    {
      name: "Product",
      fields: [
        { name: "title", type: "string", required: true },
        { name: "price", type: "decimal", required: true },
        { name: "in_stock", type: "boolean", required: false },
        { name: "status", type: "enum", values: ["draft", "active", "retired"] },
      ],
      relations: [{ name: "category", target: "Category", kind: "many_to_one" }],
    },
  ],
};

export function showKeyPage(container, { message, done }) {
  const refs = mountTemplate("tpl-key", container);
  showError(refs.error, message);
  const input = refs.form.elements.key;
  input.focus();
  refs.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value);
    try {
      await api("/projects");
      done();
    } catch (error) {
      if (error.status === 401) clearKey();
      showError(refs.error, error.detail);
    }
  });
}

// Line and column of a character offset, 1-based.
function lineAndColumn(text, offset) {
  const before = text.slice(0, offset).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

// The editor's text as a schema, or the problems found before asking the server.
export function parseSchema(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const found = findJsonError(text) || { offset: text.length, message: error.message };
    const { line, column } = lineAndColumn(text, found.offset);
    return { problems: [{ location: `line ${line}, column ${column}`, message: found.message, offset: found.offset }] };
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    return { problems: [{ location: "schema", message: 'must be a JSON object like {"entities": [...]}' }] };
  }
  if (!Array.isArray(value.entities)) {
    return { problems: [{ location: "entities", message: "must be a list of entities" }] };
  }
  return { value, problems: [] };
}

function renderProblems(list, problems, textarea) {
  list.replaceChildren(
    ...problems.map((problem) => {
      const where =
        problem.offset === undefined
          ? el("code", { text: problem.location })
          : el("button", {
              type: "button",
              class: "link",
              text: problem.location,
              onclick: () => {
                textarea.focus();
                textarea.setSelectionRange(problem.offset, problem.offset + 1);
              },
            });
      return el("li", {}, where, ": ", problem.message);
    }),
  );
  show(list, problems.length > 0);
}

export function showCreatePage(container, { navigate, onAuthError }) {
  const refs = mountTemplate("tpl-create", container);
  const form = refs.form;
  const editor = form.elements.schema;
  const fieldErrors = { project_name: refs["name-error"], provider: refs["provider-error"] };

  const check = () => {
    const { value, problems } = parseSchema(editor.value);
    renderProblems(refs["schema-problems"], problems, editor);
    editor.setAttribute("aria-invalid", String(problems.length > 0));
    refs["schema-state"].textContent = value
      ? `Valid JSON · ${value.entities.length} entit${value.entities.length === 1 ? "y" : "ies"}: ${value.entities.map((e) => e?.name).join(", ")}`
      : "";
    return value;
  };
  const reset = () => {
    editor.value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
    check();
  };
  let timer = 0;
  editor.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 250);
  });
  refs["reset-schema"].addEventListener("click", reset);
  reset();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const node of [refs.error, ...Object.values(fieldErrors)]) showError(node, "");
    clearTimeout(timer); // a pending check would hide the server's answer
    const schema = check();
    const name = form.elements.project_name.value.trim();
    if (!name) {
      showError(refs["name-error"], "Give the project a name.");
      form.elements.project_name.focus();
      return;
    }
    if (!schema) {
      editor.focus();
      return;
    }
    refs.submit.disabled = true;
    try {
      const accepted = await api("/generations", {
        method: "POST",
        idempotencyKey: newIdempotencyKey(),
        body: {
          project_name: name,
          schema,
          prompt: form.elements.prompt.value,
          provider: form.elements.provider.value,
        },
      });
      navigate(`#/g/${accepted.generation_id}`, accepted);
    } catch (error) {
      if (error.status === 401) onAuthError(error.detail);
      showServerProblems(refs, fieldErrors, editor, error);
    } finally {
      refs.submit.disabled = false;
    }
  });
}

// A 400's problems go next to the field they name; the detail is shown below the form
// (shortened when it only repeats the schema problems listed under the editor).
function showServerProblems(refs, fieldErrors, editor, error) {
  const schemaProblems = [];
  for (const problem of error.problems || []) {
    const location = String(problem.location || "");
    if (location.startsWith("schema")) {
      schemaProblems.push({ location: location.replace(/^schema\.?/, "") || "schema", message: problem.message });
    } else if (fieldErrors[location]) {
      showError(fieldErrors[location], problem.message);
    }
  }
  if (schemaProblems.length) {
    renderProblems(refs["schema-problems"], schemaProblems, editor);
    editor.setAttribute("aria-invalid", "true");
    refs["schema-state"].textContent = "";
  }
  const count = schemaProblems.length;
  showError(
    refs.error,
    count && error.detail.startsWith("The schema is not valid")
      ? `The schema is not valid: ${count} problem${count === 1 ? "" : "s"}, listed under the editor.`
      : error.detail,
  );
}

export async function showProjectsPage(container, { onAuthError }) {
  const refs = mountTemplate("tpl-projects", container);
  try {
    const { projects } = await api("/projects");
    show(refs.empty, projects.length === 0);
    refs.list.replaceChildren(...projects.map(projectItem));
  } catch (error) {
    if (error.status === 401) onAuthError(error.detail);
    showError(refs.error, error.detail);
  } finally {
    refs.list.setAttribute("aria-busy", "false");
  }
}

function projectItem(project) {
  const latest = [...project.versions].sort((a, b) => b.version - a.version)[0];
  const versions = el("div");
  renderVersions(versions, project.versions, null);
  return el(
    "li",
    { class: "panel project", "data-project": project.project_id },
    el(
      "h2",
      {},
      latest ? el("a", { href: `#/g/${latest.generation_id}`, text: project.name }) : project.name,
    ),
    el("p", {
      class: "muted",
      text: `${project.versions.length} version${project.versions.length === 1 ? "" : "s"}${project.created_at ? ` · created ${new Date(project.created_at).toLocaleString()}` : ""}`,
    }),
    versions,
  );
}
