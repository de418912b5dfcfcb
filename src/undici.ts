// The parts of undici that ambit's long-running processes use: a dispatcher per peer (CA, federation endpoint)
// and an HTTP/1 client on an upstream socket. undici's index loads all of undici (fetch, WebSocket, EventSource,
// caches, mocks, interceptors): 15 MiB of RSS in every proxy against 2 MiB for these modules, measured alone.
// They are loaded as the index loads them, including the request API it attaches to every Dispatcher; undici
// has no "exports" map and package-lock.json fixes its version, and the tests exercise every path used here.
import type { Dispatcher } from 'undici';
import AgentClass from 'undici/lib/dispatcher/agent.js';
import ClientClass from 'undici/lib/dispatcher/client.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import api from 'undici/lib/api/index.js';

Object.assign(DispatcherClass.prototype, api);

export const Agent = AgentClass;
export type Agent = InstanceType<typeof AgentClass>;
export const Client = ClientClass;
export type Client = InstanceType<typeof ClientClass>;

/** The method always given: undici's own `request` guesses PUT for a body, which no caller here means. */
export type RequestOptions = Omit<Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & { dispatcher: Dispatcher; method: Dispatcher.HttpMethod };

/**
 * undici's `request(url, options)` for a given dispatcher: the URL's origin, path and query; http and https only.
 * An abort ends it at once even while it waits for a connection: undici keeps the abort of a request it has not yet
 * put on a connection until it gets one (a connect timeout later, against a peer that does not answer).
 */
export async function request(url: string, options: RequestOptions): Promise<Dispatcher.ResponseData> {
  const parsed = new URL(url);
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new TypeError(`not an http or https URL: ${url}`);
  const { dispatcher, ...rest } = options;
  const signal = options.signal;
  // Not even dialled once aborted.
  if (signal instanceof AbortSignal && signal.aborted) throw signal.reason;
  const pending = dispatcher.request({ ...rest, origin: parsed.origin, path: `${parsed.pathname}${parsed.search}` });
  if (!(signal instanceof AbortSignal)) return pending;
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      reject(signal.reason);
      pending.then((response) => response.body.destroy(), () => {});
    };
    signal.addEventListener('abort', onAbort, { once: true });
    pending.then(
      (response) => {
        signal.removeEventListener('abort', onAbort);
        resolve(response);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
