/**
 * Exit descriptions and the unhandled-exit error, shared with the operators.
 *
 * @module
 */
export { UnhandledExitError, describeExit } from '../operators/errors';
