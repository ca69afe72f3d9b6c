/* Ring-0 trap handling: the IDT, exception stubs and the service call.
 *
 * An exception does not get handled in ring 0: fault_common saves what the
 * CPU pushed (plus CR2) as a FaultRecord at the top of this CPU's IST stack
 * and "returns" to the Rust reporter in ring 3 (fault.rs), which prints the
 * error event and halts.
 *
 * The service call does the few things ring 3 cannot: port I/O, the guest's
 * cpuid, wrmsr, hlt (for good, or until the local APIC timer fires), a
 * triple fault. kvm_pvm turns `int n` from ring 3 into
 * #UD (and `syscall` is broken) but delivers exceptions faithfully, so a
 * service call is a `ud2` with SERVICE_MAGIC in %r11 (boot/service.rs);
 * any other #UD is a fault like the rest. */

.pushsection .text.boot, "ax"
.code64

/* Fills IDT vectors 0-31 with the exception stubs (all on IST 1) and the
 * two interrupt vectors the idle service takes (no IST: they only arrive in
 * ring 0, inside that service, on its stack). The vectors between stay not
 * present, so a stray interrupt is reported as a fault. Runs once, on the
 * BSP; the APs load the same IDT. */
.global build_idt
build_idt:
    mov $fault_stubs, %esi
    mov $tern_idt, %edi
    mov $32, %ecx
1:  mov ${GATE_EXCEPTION}, %edx
    call write_gate
    add ${STUB_SIZE}, %rsi
    add $16, %rdi
    dec %ecx
    jnz 1b
    mov $timer_interrupt, %esi
    mov $tern_idt + 16 * {TIMER_VECTOR}, %edi
    mov ${GATE_INTERRUPT}, %edx
    call write_gate
    mov $spurious_interrupt, %esi
    mov $tern_idt + 16 * {SPURIOUS_VECTOR}, %edi
    mov ${GATE_INTERRUPT}, %edx
    call write_gate
    ret

/* The local APIC timer (TSC-deadline mode) ended an idle halt: acknowledge
 * it and go back to the idle service, which returns to ring 3. */
timer_interrupt:
    push %rax
    mov ${LAPIC_EOI}, %eax
    movl $0, (%rax)
    pop %rax
    iretq

/* A spurious APIC interrupt needs no acknowledgement. */
spurious_interrupt:
    iretq

/* Writes the interrupt gate for handler %rsi at %rdi; %edx holds the
 * gate's bits 32-47 (IST index, type, DPL). Preserves %ecx, %rsi, %rdi. */
write_gate:
    mov %esi, %eax
    and $0xffff, %eax           /* handler bits 0-15 */
    or ${KERNEL_CS64} << 16, %eax
    mov %rsi, %r8
    shr $16, %r8
    shl $48, %r8                /* handler bits 16-31 -> gate bits 48-63 */
    or %r8, %rax
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%rdi)
    mov %rsi, %rax
    shr $32, %rax               /* handler bits 32-63 */
    mov %rax, 8(%rdi)
    ret

/* One 16-byte stub per exception vector. The CPU pushes an error code for
 * some vectors; the others push a zero so every FaultRecord looks alike. */
.macro fault_stub vector, cpu_pushes_error, handler=fault_common
    .balign {STUB_SIZE}
    .if \cpu_pushes_error == 0
    pushq $0
    .endif
    pushq $\vector
    jmp \handler
.endm

.balign {STUB_SIZE}
fault_stubs:
    fault_stub 0, 0
    fault_stub 1, 0
    fault_stub 2, 0
    fault_stub 3, 0
    fault_stub 4, 0
    fault_stub 5, 0
    fault_stub 6, 0, invalid_opcode
    fault_stub 7, 0
    fault_stub 8, 1
    fault_stub 9, 0
    fault_stub 10, 1
    fault_stub 11, 1
    fault_stub 12, 1
    fault_stub 13, 1
    fault_stub 14, 1
    fault_stub 15, 0
    fault_stub 16, 0
    fault_stub 17, 1
    fault_stub 18, 0
    fault_stub 19, 0
    fault_stub 20, 0
    fault_stub 21, 1
    fault_stub 22, 0
    fault_stub 23, 0
    fault_stub 24, 0
    fault_stub 25, 0
    fault_stub 26, 0
    fault_stub 27, 0
    fault_stub 28, 0
    fault_stub 29, 1
    fault_stub 30, 1
    fault_stub 31, 0

/* On the IST stack: vector, error code, then the CPU's RIP, CS, RFLAGS, RSP,
 * SS. Push CR2 to complete the FaultRecord and go to the ring-3 reporter,
 * which runs on this same IST stack below the record. */
fault_common:
    mov %cr2, %rax
    push %rax
    mov %rsp, %rdi              /* the FaultRecord, argument of the reporter */
    /* A fault inside the reporter itself (its stack is the IST_SIZE bytes
     * below the record) cannot be reported again: stop this CPU. */
    mov 48(%rdi), %rax          /* the faulting RSP */
    cmp %rdi, %rax
    jae 2f
    lea -{IST_SIZE}(%rdi), %rcx
    cmp %rcx, %rax
    jae halt_forever
2:  lea -64(%rdi), %rax
    and $-16, %rax
    sub $8, %rax                /* stack as right after a call */
    pushq ${USER_DS}
    push %rax
    pushq ${RFLAGS_RING3}
    pushq ${USER_CS}
    pushq ${fault_reporter}
    iretq

/* #UD: a service call if %r11 holds SERVICE_MAGIC, else a fault. */
invalid_opcode:
    movabs ${SERVICE_MAGIC}, %rcx
    cmp %rcx, %r11
    jne fault_common
    addq $2, 16(%rsp)           /* return past the ud2 */
    add $16, %rsp               /* drop vector and error code */
    /* fall through */

/* %eax = service, %rdi/%rsi/%rdx = arguments, result in %eax; %ecx and
 * %r8 are clobbered. Unknown services return without effect. Port I/O is here
 * because kvm_pvm clears RFLAGS.IOPL in ring 3. */
service_dispatch:
    cmp ${SERVICE_PORT_WRITE_BYTES}, %eax
    je port_write_bytes
    cmp ${SERVICE_PORT_READ}, %eax
    je port_read
    cmp ${SERVICE_PORT_WRITE}, %eax
    je port_write
    cmp ${SERVICE_CPUID}, %eax
    je guest_cpuid
    cmp ${SERVICE_ENABLE_KVMCLOCK}, %eax
    je enable_kvmclock
    cmp ${SERVICE_HALT}, %eax
    je halt_forever
    cmp ${SERVICE_IDLE_UNTIL}, %eax
    je idle_until
    cmp ${SERVICE_TRIPLE_FAULT}, %eax
    je triple_fault
    iretq

/* %di = port, %rsi = bytes, %rdx = count: a single rep outsb. KVM's
 * emulator still exits to the VMM once per byte (strace: one KVM_RUN per
 * byte of console output), so a migration can pause the guest mid-line and
 * the destination writes the rest; the runner joins the two parts. */
port_write_bytes:
    mov %rdx, %rcx
    mov %edi, %edx
    rep outsb
    iretq

/* %di = port; the byte read is returned in %eax. */
port_read:
    mov %edi, %edx
    xor %eax, %eax
    inb %dx, %al
    iretq

/* %di = port, %sil = byte. */
port_write:
    mov %edi, %edx
    mov %esi, %eax
    outb %al, %dx
    iretq

/* %edi = leaf, %esi = subleaf, %rdx = where to store eax, ebx, ecx, edx.
 * In ring 0 KVM emulates cpuid; in ring 3 kvm_pvm runs it natively and
 * returns the host's values (APIC IDs, hypervisor leaves). */
guest_cpuid:
    mov %rdx, %r8
    push %rbx
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    mov %eax, (%r8)
    mov %ebx, 4(%r8)
    mov %ecx, 8(%r8)
    mov %edx, 12(%r8)
    pop %rbx
    iretq

/* %rdi: physical address of this CPU's pvclock area, bit 0 set (enable). */
enable_kvmclock:
    mov ${MSR_KVM_SYSTEM_TIME_NEW}, %ecx
    mov %edi, %eax
    mov %rdi, %rdx
    shr $32, %rdx
    wrmsr
    iretq

/* %rdi = TSC deadline (non-zero). Arms this CPU's local APIC timer (set to
 * TSC-deadline mode by ring 3, idle.rs) and halts with interrupts on
 * until it fires: sti's one-instruction shadow makes sti; hlt atomic, and a
 * deadline already past leaves its interrupt pending, which ends the hlt at
 * once. Any other wake (a spurious interrupt) returns early; ring 3 copes. */
idle_until:
    mov ${MSR_TSC_DEADLINE}, %ecx
    mov %edi, %eax
    mov %rdi, %rdx
    shr $32, %rdx
    wrmsr
    sti
    hlt
    cli
    iretq

halt_forever:
    cli
    hlt
    jmp halt_forever

/* An empty IDT makes the #UD a double and then a triple fault, which resets
 * (or, under QEMU -no-reboot, ends) the VM. int3 would be simpler, but
 * kvm_pvm's emulator rejects it in ring 0. */
triple_fault:
    lidt empty_idt_ptr
    ud2
    jmp triple_fault
.popsection
