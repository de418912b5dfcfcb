// The one place @peculiar/x509 is loaded: its DI container (tsyringe) needs the Reflect metadata
// polyfill loaded first, and WebCrypto must be registered as its provider before any use.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export * from '@peculiar/x509';
