// Preload for the MCP conformance runner: it has no option for an Authorization header, and our
// /mcp requires a bearer token. Run as
//   CONFORMANCE_BEARER_TOKEN=<token> node --import ./inject-auth.mjs .../conformance server --url ...
// It adds `Authorization: Bearer <token>` to every request the runner makes that has none:
// - globalThis.fetch, which the SDK client in every scenario uses;
// - undici's request(), which only the dns-rebinding-protection scenario uses (it sends raw
//   POSTs with forged Host and Origin headers). With the token present that scenario really
//   tests Host/Origin validation: a forged Host must still be refused although the token is valid,
//   and a correct Host must get through to the MCP server.
import { register } from 'node:module';

const token = process.env.CONFORMANCE_BEARER_TOKEN;
if (!token) {
  throw new Error('inject-auth.mjs: set CONFORMANCE_BEARER_TOKEN');
}

const originalFetch = globalThis.fetch;
globalThis.fetch = (input, init = {}) => {
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
  if (!headers.has('authorization')) headers.set('Authorization', `Bearer ${token}`);
  return originalFetch(input, { ...init, headers });
};

register('./inject-auth-hooks.mjs', import.meta.url);
