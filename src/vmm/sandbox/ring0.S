/*
 * ring0.S: the only ring-0 code of a sandbox (src/vmm/sandbox/layout.ts puts it at 0x9000): one
 * 16-byte stub per exception vector 0-31, and the common part, which writes the fault record
 * (vector, error code, RIP, CS, RFLAGS, RSP, SS, CR2) to the supervisor page at 0x4000 and
 * reports it with `out %eax, $0xe1`. It never returns to the guest. On PVM hosts ring-0 code is
 * emulated, so it is kept to these few instructions.
 *
 * scripts/build-sandbox-ring0.sh assembles it into src/vmm/sandbox/ring0.ts.
 */
	.code64
	.text
	.set FAULT_RECORD, 0x4000
	.set FAULT_PORT, 0xe1
	.set BASE, 0x9000

	.macro stub vec, has_error
	.balign 16
	.if \has_error == 0
	pushq $0
	.endif
	pushq $\vec
	jmp common
	.endm

stubs:
	stub 0, 0
	stub 1, 0
	stub 2, 0
	stub 3, 0
	stub 4, 0
	stub 5, 0
	stub 6, 0
	stub 7, 0
	stub 8, 1
	stub 9, 0
	stub 10, 1
	stub 11, 1
	stub 12, 1
	stub 13, 1
	stub 14, 1
	stub 15, 0
	stub 16, 0
	stub 17, 1
	stub 18, 0
	stub 19, 0
	stub 20, 0
	stub 21, 1
	stub 22, 0
	stub 23, 0
	stub 24, 0
	stub 25, 0
	stub 26, 0
	stub 27, 0
	stub 28, 0
	stub 29, 1
	stub 30, 1
	stub 31, 0

	.balign 16
common:
	movl $FAULT_RECORD, %edi
	movq 0(%rsp), %rax
	movq %rax, 0(%rdi)
	movq 8(%rsp), %rax
	movq %rax, 8(%rdi)
	movq 16(%rsp), %rax
	movq %rax, 16(%rdi)
	movq 24(%rsp), %rax
	movq %rax, 24(%rdi)
	movq 32(%rsp), %rax
	movq %rax, 32(%rdi)
	movq 40(%rsp), %rax
	movq %rax, 40(%rdi)
	movq 48(%rsp), %rax
	movq %rax, 48(%rdi)
	movq %cr2, %rax
	movq %rax, 56(%rdi)
	movl $1, %eax
	outl %eax, $FAULT_PORT
1:	hlt
	jmp 1b
