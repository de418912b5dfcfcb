// The CLI processes the tests start run the compiled build (dist/), as `npm start` and a deployment do: built once
// here, before any worker starts (`npm test` has built it already; a bare `vitest` run after an edit rebuilds it),
// rather than type-stripped by every process at its start.
import { ensureBuilt } from '../bench/system/build.ts';

export default function setup(): void {
  ensureBuilt();
}
