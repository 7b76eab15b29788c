/*
 * kvmrx-start.S: the entry of a sandbox guest. The host enters here at CPL 3 in 64-bit mode with
 * RSP at the top of guest RAM, RFLAGS.IOPL = 3 and FS.base = KVMRX_TLS (docs/sandbox.md).
 */
	.section .text.kvmrx_start, "ax"
	.globl _start
	.type _start, @function
_start:
	xorl %ebp, %ebp
	andq $-16, %rsp
	call kvmrx_start        /* kvmrx.c: init, READY, then the call loop; never returns */
	ud2
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
