// WebCrypto type names as globals: @peculiar/x509's declarations use the DOM names, and the project
// does not load the DOM lib (Node is the only runtime), so alias them to Node's webcrypto types.
import type { webcrypto } from 'node:crypto';

declare global {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface CryptoKey extends webcrypto.CryptoKey {}
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface CryptoKeyPair extends webcrypto.CryptoKeyPair {}
  type EcdsaParams = webcrypto.EcdsaParams;
  type EcKeyGenParams = webcrypto.EcKeyGenParams;
  type EcKeyAlgorithm = webcrypto.EcKeyAlgorithm;
  type Algorithm = webcrypto.Algorithm;
  type BufferSource = webcrypto.BufferSource;
  type Crypto = webcrypto.Crypto;
}
