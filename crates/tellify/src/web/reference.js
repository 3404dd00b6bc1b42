// The API reference page: renders the server's OpenAPI document (fetched from the URL in the
// page's `data-openapi` attribute) as HTML. No third-party code; everything is in the binary.
"use strict";

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];

function esc(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

// Descriptions are short Markdown: `code` spans are shown as code, the rest as text.
function prose(text) {
  if (!text) return "";
  return esc(text).replace(/`([^`]+)`/g, "<code>$1</code>");
}

function refName(ref) {
  return ref.replace(/^#\/components\/schemas\//, "");
}

function anchor(kind, name) {
  return kind + "-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
}

function refLink(ref) {
  const name = refName(ref);
  return '<a class="ref" href="#' + anchor("schema", name) + '">' + esc(name) + "</a>";
}

// What a schema says about its values, beyond its type: format, bounds, pattern, enum…
function constraints(s) {
  const out = [];
  if (s.format) out.push("format " + esc(s.format));
  if (s.minimum !== undefined) out.push("≥ " + esc(s.minimum));
  if (s.exclusiveMinimum !== undefined) out.push("> " + esc(s.exclusiveMinimum));
  if (s.maximum !== undefined) out.push("≤ " + esc(s.maximum));
  if (s.exclusiveMaximum !== undefined) out.push("< " + esc(s.exclusiveMaximum));
  if (s.minLength !== undefined) out.push("length ≥ " + esc(s.minLength));
  if (s.maxLength !== undefined) out.push("length ≤ " + esc(s.maxLength));
  if (s.minItems !== undefined) out.push("items ≥ " + esc(s.minItems));
  if (s.maxItems !== undefined) out.push("items ≤ " + esc(s.maxItems));
  if (s.uniqueItems) out.push("unique items");
  if (s.minProperties !== undefined) out.push("properties ≥ " + esc(s.minProperties));
  if (s.pattern) out.push("pattern <code>" + esc(s.pattern) + "</code>");
  if (s.enum) out.push("one of " + s.enum.map((v) => "<code>" + esc(JSON.stringify(v)) + "</code>").join(", "));
  if (s.const !== undefined) out.push("exactly <code>" + esc(JSON.stringify(s.const)) + "</code>");
  if (s.default !== undefined) out.push("default <code>" + esc(JSON.stringify(s.default)) + "</code>");
  if (s.readOnly) out.push("read-only");
  if (s.writeOnly) out.push("write-only");
  if (s.deprecated) out.push("deprecated");
  return out.length ? ' <span class="constraints">' + out.join("; ") + "</span>" : "";
}

function typeName(s) {
  if (s === true || s === undefined) return "any";
  if (s === false) return "nothing";
  if (s.$ref) return refLink(s.$ref);
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  if (types.length === 0) {
    if (s.properties) return "object";
    // The combinations are listed below the type.
    if (s.oneOf || s.anyOf || s.allOf) return "";
    if (s.const !== undefined) return typeof s.const;
    if (s.enum) return "enum";
    return "any";
  }
  return types
    .map((t) => (t === "array" && s.items ? "array of " + (typeName(s.items) || "items") : esc(t)))
    .join(" | ");
}

// A schema as a nested list. References are links to the schema's own entry, so a
// recursive schema does not recurse here.
function schema(s, depth) {
  depth = depth || 0;
  if (s === true || s === undefined) return '<span class="type">any</span>';
  if (s === false) return '<span class="type">nothing</span>';
  if (depth > 12) return '<span class="type">…</span>';
  const type = typeName(s);
  let html = (type ? '<span class="type">' + type + "</span>" : "") + constraints(s);
  if (s.description && !s.$ref) html += ' <span class="desc">' + prose(s.description) + "</span>";
  const parts = [];
  for (const key of ["oneOf", "anyOf", "allOf"]) {
    if (Array.isArray(s[key])) {
      const label = { oneOf: "one of", anyOf: "any of", allOf: "all of" }[key];
      parts.push(
        "<li><em>" + label + "</em><ul>" +
          s[key].map((sub) => "<li>" + schema(sub, depth + 1) + "</li>").join("") +
          "</ul></li>"
      );
    }
  }
  if (s.properties) {
    const required = new Set(s.required || []);
    for (const [name, sub] of Object.entries(s.properties)) {
      parts.push(
        '<li><code class="prop">' + esc(name) + "</code>" +
          (required.has(name) ? ' <span class="required">required</span>' : "") +
          ": " + schema(sub, depth + 1) + "</li>"
      );
    }
  }
  if (s.additionalProperties !== undefined && s.additionalProperties !== false) {
    parts.push("<li><em>any other property</em>: " + schema(s.additionalProperties, depth + 1) + "</li>");
  }
  if (s.additionalProperties === false && s.properties) {
    parts.push("<li><em>no other properties</em></li>");
  }
  if (s.items && typeof s.items === "object" && !s.items.$ref &&
      (s.items.properties || s.items.oneOf || s.items.anyOf || s.items.allOf)) {
    parts.push("<li><em>items</em>: " + schema(s.items, depth + 1) + "</li>");
  }
  if (parts.length) html += "<ul>" + parts.join("") + "</ul>";
  return html;
}

function content(c) {
  if (!c) return "";
  return Object.entries(c)
    .map(([type, media]) =>
      '<div class="media"><span class="mime">' + esc(type) + "</span> " +
        (media.schema ? schema(media.schema) : '<span class="type">any</span>') + "</div>")
    .join("");
}

function parameters(params) {
  if (!params || params.length === 0) return "";
  const rows = params
    .map((p) =>
      "<tr><td><code>" + esc(p.name) + "</code>" +
        (p.required ? ' <span class="required">required</span>' : "") +
        "</td><td>" + esc(p.in) + "</td><td>" + (p.schema ? schema(p.schema) : "") +
        "</td><td>" + prose(p.description) + "</td></tr>")
    .join("");
  return "<h4>Parameters</h4><table><thead><tr><th>name</th><th>in</th><th>schema</th>" +
    "<th>description</th></tr></thead><tbody>" + rows + "</tbody></table>";
}

function requestBody(body) {
  if (!body) return "";
  return "<h4>Request body" + (body.required ? ' <span class="required">required</span>' : "") +
    "</h4>" + (body.description ? "<p>" + prose(body.description) + "</p>" : "") +
    content(body.content);
}

function responses(rs) {
  if (!rs) return "";
  const rows = Object.keys(rs)
    .sort()
    .map((status) => {
      const r = rs[status];
      return '<tr><td class="status s' + esc(status[0]) + '">' + esc(status) + "</td><td>" +
        prose(r.description) + content(r.content) + "</td></tr>";
    })
    .join("");
  return "<h4>Responses</h4><table><tbody>" + rows + "</tbody></table>";
}

function operations(doc) {
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const params = (item.parameters || []).concat(op.parameters || []);
      ops.push({ path, method, op, params, tag: (op.tags && op.tags[0]) || "other" });
    }
  }
  return ops;
}

function render(doc) {
  const info = doc.info || {};
  const ops = operations(doc);
  const tags = [];
  for (const o of ops) if (!tags.includes(o.tag)) tags.push(o.tag);
  const opId = (o) => anchor("op", o.op.operationId || o.method + o.path);
  const security = Object.entries((doc.components && doc.components.securitySchemes) || {})
    .map(([name, s]) => "<li><code>" + esc(name) + "</code>: " + esc(s.type) +
      (s.scheme ? " " + esc(s.scheme) : "") + (s.description ? " — " + prose(s.description) : "") + "</li>")
    .join("");
  let nav = "";
  let body = "";
  for (const tag of tags) {
    const mine = ops.filter((o) => o.tag === tag);
    nav += "<li><strong>" + esc(tag) + "</strong><ul>" +
      mine.map((o) => '<li><a href="#' + opId(o) + '"><span class="method ' + o.method + '">' +
        o.method.toUpperCase() + "</span> " + esc(o.path) + "</a></li>").join("") + "</ul></li>";
    body += '<section class="tag"><h2 id="' + anchor("tag", tag) + '">' + esc(tag) + "</h2>";
    for (const o of mine) {
      body += '<article class="operation" id="' + opId(o) + '"><h3><span class="method ' + o.method +
        '">' + o.method.toUpperCase() + "</span> <code>" + esc(o.path) + "</code></h3>" +
        (o.op.summary ? '<p class="summary">' + prose(o.op.summary) + "</p>" : "") +
        (o.op.description ? "<p>" + prose(o.op.description) + "</p>" : "") +
        parameters(o.params) + requestBody(o.op.requestBody) + responses(o.op.responses) +
        "</article>";
    }
    body += "</section>";
  }
  const schemas = (doc.components && doc.components.schemas) || {};
  const names = Object.keys(schemas).sort();
  nav += "<li><strong>schemas</strong><ul>" +
    names.map((n) => '<li><a href="#' + anchor("schema", n) + '">' + esc(n) + "</a></li>").join("") +
    "</ul></li>";
  body += '<section class="schemas"><h2 id="schemas">Schemas</h2>' +
    names.map((n) => '<article class="schema" id="' + anchor("schema", n) + '"><h3>' + esc(n) +
      "</h3>" + schema(schemas[n]) + "</article>").join("") + "</section>";
  return '<header><h1>' + esc(info.title || "API") + ' <span class="version">' +
    esc(info.version || "") + " · OpenAPI " + esc(doc.openapi || "") + "</span></h1>" +
    (info.description ? "<p>" + prose(info.description) + "</p>" : "") +
    (security ? "<p>Authentication:</p><ul>" + security + "</ul>" : "") +
    "<p>" + ops.length + " operations.</p></header>" +
    '<div class="layout"><nav><ul>' + nav + "</ul></nav><main>" + body + "</main></div>";
}

if (typeof module !== "undefined") {
  module.exports = { render };
} else {
  const root = document.getElementById("reference");
  const url = root.getAttribute("data-openapi");
  document.getElementById("source").setAttribute("href", url);
  fetch(url)
    .then((r) => {
      if (!r.ok) throw new Error(url + " answered " + r.status);
      return r.json();
    })
    .then((doc) => {
      root.innerHTML = render(doc);
      if (location.hash) {
        const target = document.getElementById(location.hash.slice(1));
        if (target) target.scrollIntoView();
      }
    })
    .catch((e) => {
      root.textContent = "Failed to load the OpenAPI document: " + e.message;
    });
}
