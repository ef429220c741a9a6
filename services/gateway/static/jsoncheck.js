// Where a JSON text goes wrong, and why, in words a person can act on. Browsers' own
// JSON.parse messages differ and often give no position; this scanner always does.

const WHITESPACE = " \t\n\r";
const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;

class JsonSyntaxError {
  constructor(offset, message) {
    this.offset = offset;
    this.message = message;
  }
}

// { offset, message } of the first error, or null when the text is valid JSON.
export function findJsonError(text) {
  let i = 0;
  const found = () => (i >= text.length ? " but the text ends" : `, found ${JSON.stringify(text[i])}`);
  const fail = (message) => {
    throw new JsonSyntaxError(Math.min(i, text.length), message);
  };
  const skipSpace = () => {
    while (i < text.length && WHITESPACE.includes(text[i])) i += 1;
  };

  function string() {
    i += 1;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') {
        i += 1;
        return;
      }
      if (c === "\\") i += 1;
      else if (c < " ") fail("a line break or control character inside a string (write it as \\n)");
      i += 1;
    }
    fail("a string is not closed with a double quote");
  }

  function number() {
    NUMBER.lastIndex = i;
    if (!NUMBER.exec(text)) fail("not a valid number");
    i = NUMBER.lastIndex;
  }

  function members(close, member) {
    i += 1;
    skipSpace();
    if (text[i] === close) {
      i += 1;
      return;
    }
    for (;;) {
      member();
      skipSpace();
      if (text[i] === ",") {
        i += 1;
        continue;
      }
      if (text[i] === close) {
        i += 1;
        return;
      }
      fail(`expected ',' or '${close}'${found()}`);
    }
  }

  function property() {
    skipSpace();
    if (text[i] !== '"') fail(`expected a property name in double quotes${found()}`);
    string();
    skipSpace();
    if (text[i] !== ":") fail(`expected ':' after the property name${found()}`);
    i += 1;
    value();
  }

  function value() {
    skipSpace();
    const c = text[i];
    if (c === "{") return members("}", property);
    if (c === "[") return members("]", value);
    if (c === '"') return string();
    if (c === "-" || (c >= "0" && c <= "9")) return number();
    for (const word of ["true", "false", "null"]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return undefined;
      }
    }
    return fail(`expected a value${found()}`);
  }

  try {
    value();
    skipSpace();
    if (i < text.length) fail("unexpected text after the end of the JSON document");
    return null;
  } catch (error) {
    if (error instanceof JsonSyntaxError) return { offset: error.offset, message: error.message };
    throw error;
  }
}
