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

export type RequestOptions = Omit<Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & { dispatcher: Dispatcher; method?: Dispatcher.HttpMethod };

/** undici's `request(url, options)` for a given dispatcher: the URL's origin, path and query, GET unless told. */
export function request(url: string, options: RequestOptions): Promise<Dispatcher.ResponseData> {
  const parsed = new URL(url);
  const { dispatcher, ...rest } = options;
  return dispatcher.request({ ...rest, origin: parsed.origin, path: `${parsed.pathname}${parsed.search}`, method: options.method ?? 'GET' });
}
