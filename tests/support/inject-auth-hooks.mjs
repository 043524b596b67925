// Module hooks registered by inject-auth.mjs: `import ... from "undici"` gets undici with a
// request() that adds the bearer token. Everything else undici exports is passed through.
const PREFIX = 'authed-undici:';

export async function resolve(specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context);
  if (specifier === 'undici' && !context.parentURL?.startsWith(PREFIX)) {
    return { url: PREFIX + resolved.url, shortCircuit: true };
  }
  return resolved;
}

export async function load(url, context, nextLoad) {
  if (!url.startsWith(PREFIX)) return nextLoad(url, context);
  const real = JSON.stringify(url.slice(PREFIX.length));
  const source = `
    import * as undici from ${real};
    export * from ${real};
    export default undici.default;
    export function request(url, options = {}) {
      const headers = { ...(options.headers ?? {}) };
      const named = Object.keys(headers).some((name) => name.toLowerCase() === 'authorization');
      if (!named) headers.Authorization = 'Bearer ' + process.env.CONFORMANCE_BEARER_TOKEN;
      return undici.request(url, { ...options, headers });
    }
  `;
  return { format: 'module', source, shortCircuit: true };
}
