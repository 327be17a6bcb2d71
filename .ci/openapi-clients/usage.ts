// A platform team's typed use of the generated types (target/openapi-clients/typescript/roster.d.ts):
// `tsc --noEmit --strict` fails if the document stops describing these shapes.
import type { components, operations, paths } from "./roster";

type Schemas = components["schemas"];
type Json = "application/json; charset=utf-8";

// Request bodies, as the README's examples write them.
const app: operations["createApp"]["requestBody"]["content"][Json] = {
  name: "sherpany",
  base_url: "https://scim.example.net/v2",
  auth: { type: "bearer", token: "target-secret" },
  scope: { email_domains: ["example.com"] },
  deprovision: { action: "deactivate", delete_after_days: 30 },
};

const joiner: Schemas["EventIn"] = {
  event_id: "evt-1",
  type: "joiner",
  occurred_at: "2026-11-23T09:00:00Z",
  employee: { employee_id: "E100", email: "ada@example.com", given_name: "Ada" },
};

// `null` clears a field: a mover without a title, an app without its role mapping.
const mover: Schemas["EventIn"] = {
  event_id: "evt-3",
  type: "mover",
  occurred_at: "2026-11-23T10:00:00Z",
  employee: { employee_id: "E100", title: null },
};
const clearRoleMapping: operations["updateApp"]["requestBody"]["content"][Json] = { role_mapping: null };

const batch: paths["/events:batch"]["post"]["requestBody"]["content"][Json] = { events: [joiner, mover] };

// Answers: a success and a declared problem+json error.
type Created = operations["createApp"]["responses"][201]["content"][Json];
type Invalid = operations["createApp"]["responses"][422]["content"]["application/problem+json"];
type Linked = operations["getIdentity"]["responses"][200]["content"][Json];

function describe(created: Created, invalid: Invalid, person: Linked): string {
  const states = (person.links ?? []).map((link) => `${link.app_name}: ${link.state}`);
  return `${created.id} ${created.auth.token_set === true} ${invalid.type} ${invalid.status} ${states.join(", ")}`;
}

export { app, batch, clearRoleMapping, describe };
