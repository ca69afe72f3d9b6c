/* PVH entry, the switch to long mode and the drop to ring 3.
 *
 * All of this runs in ring 0, where kvm_pvm emulates every instruction
 * (about 2 M/s) and rejects a few (int3, popcnt, xrstor, fwait, cmpxchg16b),
 * so it is kept short and plain: no loops except the IDT fill in traps.s.
 * Everything else (parsing boot data, waking APs, kvmclock, the workloads)
 * is Rust code in ring 3.
 *
 * Placeholders in braces are constants from boot/mod.rs (global_asm! operands). */

/* Xen PVH note: loaders enter tern_pvh_entry32 in 32-bit protected mode. */
.pushsection .note.Xen, "a", @note
.balign 4
.long 4                         /* name size: "Xen\0" */
.long 4                         /* descriptor size */
.long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.long tern_pvh_entry32
.popsection

.pushsection .text.boot, "ax"
.code32
.global tern_pvh_entry32
tern_pvh_entry32:
    /* Paging off, flat 32-bit segments, %ebx = physical address of
     * hvm_start_info, no stack. Record the boot time and the start info. */
    cli
    rdtsc
    mov %eax, tern_boot_tsc
    mov %edx, tern_boot_tsc + 4
    mov %ebx, tern_start_info_paddr
    /* The PVH ABI gives no stack: the far return below needs one. */
    mov $tern_bsp_rsp0_top, %esp
    mov $bsp_long_mode, %esi
    /* fall through */

/* Shared by the BSP and the APs: from 32-bit protected mode without paging
 * to 64-bit mode on the identity map, then jump to %esi. */
enter_long_mode:
    mov %cr4, %eax
    or ${CR4_SET}, %eax         /* PAE; FXSR/XMM exceptions: the Rust code uses SSE */
    mov %eax, %cr4
    mov $tern_boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* IA32_EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    and ${CR0_CLEAR}, %eax      /* no EM/TS (SSE must not trap); caches on */
    or ${CR0_SET}, %eax         /* PE, MP, NE, WP, PG */
    mov %eax, %cr0
    lgdt gdt_ptr
    push ${KERNEL_CS64}
    push %esi
    lret                        /* loads the 64-bit code segment */

/* An AP arrives here from the real-mode trampoline (trampoline.s), in 32-bit
 * protected mode without paging. */
.global tern_ap_entry32
tern_ap_entry32:
    mov ${KERNEL_DS}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    /* After INIT-SIPI %esp is 0: use the ring-0 stack the BSP prepared
     * (below 4 GiB; the far return below needs a stack). */
    mov tern_ap_boot + 0, %esp
    mov $ap_long_mode, %esi
    jmp enter_long_mode

.code64
bsp_long_mode:
    mov ${KERNEL_DS}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $tern_bsp_rsp0_top, %rsp
    call build_idt
    call write_bsp_tss_descriptor
    mov ${TSS0_SELECTOR}, %eax
    mov $tern_bsp_user_stack_top - 8, %rdx
    mov ${bsp_main}, %rsi
    mov tern_start_info_paddr, %edi
    jmp enter_ring3

ap_long_mode:
    /* The BSP filled tern_ap_boot (boot/smp.rs) before sending the SIPI and
     * waits for this AP to check in before reusing it. */
    mov tern_ap_boot + 0, %rsp
    mov tern_ap_boot + 8, %rdx
    mov tern_ap_boot + 16, %rsi
    mov tern_ap_boot + 24, %rdi
    mov tern_ap_boot + 32, %eax
    /* fall through */

/* %rsp: this CPU's ring-0 stack; %ax: its TSS selector; %rsi: ring-3 entry
 * point; %rdx: ring-3 stack pointer; %rdi: the entry point's argument. */
enter_ring3:
    xor %ecx, %ecx
    mov %ecx, %fs
    mov %ecx, %gs
    ltr %ax
    lidt idt_ptr
    pushq ${USER_DS}
    push %rdx
    pushq ${RFLAGS_RING3}       /* IOPL 3 (port I/O from ring 3), interrupts off */
    pushq ${USER_CS}
    push %rsi
    iretq

/* GDT slot of CPU 0's TSS <- descriptor of tern_bsp_tss (below 4 GiB). */
write_bsp_tss_descriptor:
    mov $tern_bsp_tss, %eax
    mov %rax, %rdx
    shl $16, %rdx
    movabs $0xffffff0000, %rcx
    and %rcx, %rdx              /* base bits 0-23 -> descriptor bits 16-39 */
    mov %rax, %rcx
    shr $24, %rcx
    shl $56, %rcx
    or %rcx, %rdx               /* base bits 24-31 -> descriptor bits 56-63 */
    movabs ${TSS_DESCRIPTOR_TYPE_LIMIT}, %rcx
    or %rcx, %rdx
    mov %rdx, tern_gdt_tss
    movq $0, tern_gdt_tss + 8   /* base bits 32-63 */
    ret
.popsection
